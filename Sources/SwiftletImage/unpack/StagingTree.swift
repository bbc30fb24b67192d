import Glibc
import SwiftletSys

/// What an entry of the image should be in the ext4: the staging directory
/// holds names and data only (it is written without privileges), this holds
/// what needs root to set (owners, device nodes, setuid bits, xattrs).
struct EntryMetadata: Equatable {
    enum Kind: Equatable {
        case file, directory, symlink, fifo
        case characterDevice(major: UInt32, minor: UInt32)
        case blockDevice(major: UInt32, minor: UInt32)

        /// The inode's file-type bits (S_IFMT).
        var typeBits: UInt32 {
            switch self {
            case .file: return 0o100000
            case .directory: return 0o040000
            case .symlink: return 0o120000
            case .fifo: return 0o010000
            case .characterDevice: return 0o020000
            case .blockDevice: return 0o060000
            }
        }

        /// Device nodes and FIFOs are staged as empty files and made by debugfs.
        var isSpecial: Bool {
            switch self {
            case .fifo, .characterDevice, .blockDevice: return true
            default: return false
            }
        }
    }

    var kind: Kind
    /// Permission bits, setuid/setgid/sticky included (0o7777).
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var modificationTime: Int64
    var xattrs: [TarEntry.Xattr]

    static let implicitDirectory = EntryMetadata(kind: .directory, mode: 0o755, uid: 0, gid: 0, modificationTime: 0, xattrs: [])
}

/// An image's root filesystem being assembled in a host directory, layer by
/// layer. Every entry is created relative to the staging root without
/// following symbolic links (`openat` with `O_NOFOLLOW` at each step), so no
/// entry of a hostile image lands outside it: a path with `..` or a leading
/// `/`, or one whose parent is a symbolic link, is refused.
final class StagingTree {
    let path: String
    private let root: OwnedFD
    /// By path relative to the root ("" is the root itself).
    private(set) var entries: [String: EntryMetadata] = [:]
    /// What the current layer created: an opaque whiteout keeps these.
    private var createdInLayer: Set<String> = []
    /// An estimate of the filesystem's size: data rounded to blocks, plus inodes.
    private(set) var estimatedBytes: UInt64 = 0
    private let maxBytes: UInt64
    private let buffer: UnsafeMutableRawBufferPointer

    /// Creates `path` (which must not exist) as an empty root.
    init(path: String, maxBytes: UInt64) throws(ImageError) {
        guard mkdir(path, 0o755) == 0 else { throw .system(.last("mkdir(\(path))")) }
        do { root = try OwnedFD(opening: path, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) } catch { throw .system(error) }
        self.path = path
        self.maxBytes = maxBytes
        entries[""] = EntryMetadata.implicitDirectory
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 18, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// Starts a layer: its opaque whiteouts hide only what earlier layers made.
    func beginLayer() { createdInLayer.removeAll(keepingCapacity: true) }

    /// Applies one tar entry, reading its data from `reader`. With
    /// `whiteouts` (the layers of an OCI or Docker image), `.wh.NAME` deletes
    /// NAME and `.wh..wh..opq` empties its directory of what earlier layers made.
    func apply<S: ByteSource>(_ entry: TarEntry, from reader: inout TarReader<S>, layer: String, whiteouts: Bool) throws(ImageError) {
        let parts = try Self.components(entry.path, layer: layer)
        guard let name = parts.last else {
            // The root itself ("./"): only its metadata.
            if entry.kind == .directory { entries[""] = metadata(entry, kind: .directory) }
            return
        }
        let parentPath = parts.dropLast().joined(separator: "/")
        let relPath = parts.joined(separator: "/")

        if whiteouts, name.hasPrefix(".wh.") {
            guard let parent = try openDirectory(parts.dropLast(), create: false, layer: layer, entry: entry.path) else { return }
            if name == ".wh..wh..opq" {
                for child in try listDirectory(parent.raw, at: parentPath) {
                    let childPath = parentPath.isEmpty ? child : parentPath + "/" + child
                    if !createdInLayer.contains(childPath) { try remove(child, in: parent.raw, relPath: childPath) }
                }
            } else {
                let target = String(name.dropFirst(4))
                guard !target.isEmpty, target != ".", target != ".." else {
                    throw .unsafeEntry(layer: layer, path: entry.path, reason: "a whiteout of nothing")
                }
                try remove(target, in: parent.raw, relPath: parentPath.isEmpty ? target : parentPath + "/" + target)
            }
            return
        }

        guard let parent = try openDirectory(parts.dropLast(), create: true, layer: layer, entry: entry.path) else { return }
        let dir = parent.raw
        var st = stat()
        let exists = fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0
        if exists {
            // A directory stays a directory (its contents are kept); anything else is replaced.
            let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
            if !(isDirectory && entry.kind == .directory) { try remove(name, in: dir, relPath: relPath) }
        }
        switch entry.kind {
        case .directory:
            if !exists || (st.st_mode & S_IFMT) != S_IFDIR {
                guard mkdirat(dir, name, 0o755) == 0 else { throw .system(.last("mkdirat(\(relPath))")) }
            }
            try account(4096)
            entries[relPath] = metadata(entry, kind: .directory)
        case .file:
            try writeFile(name, in: dir, relPath: relPath, size: entry.size, from: &reader, layer: layer)
            entries[relPath] = metadata(entry, kind: .file)
        case .symlink:
            guard !entry.linkTarget.isEmpty, !entry.linkTarget.utf8.contains(0), entry.linkTarget.utf8.count < 4096 else {
                throw .unsafeEntry(layer: layer, path: entry.path, reason: "a symbolic link with an empty or over-long target")
            }
            guard symlinkat(entry.linkTarget, dir, name) == 0 else { throw .system(.last("symlinkat(\(relPath))")) }
            try account(entry.linkTarget.utf8.count > 59 ? 4096 + 256 : 256)
            entries[relPath] = metadata(entry, kind: .symlink)
        case .hardLink:
            let targetParts = try Self.components(entry.linkTarget, layer: layer)
            guard let targetName = targetParts.last else {
                throw .unsafeEntry(layer: layer, path: entry.path, reason: "a hard link to the root")
            }
            let targetPath = targetParts.joined(separator: "/")
            guard let targetDir = try openDirectory(targetParts.dropLast(), create: false, layer: layer, entry: entry.path),
                  let target = entries[targetPath], target.kind != .directory, target.kind != .symlink
            else { throw .unsafeEntry(layer: layer, path: entry.path, reason: "a hard link to '\(entry.linkTarget)', which is not a file of the image") }
            guard linkat(targetDir.raw, targetName, dir, name, 0) == 0 else { throw .system(.last("linkat(\(relPath))")) }
            entries[relPath] = target
        case .characterDevice, .blockDevice, .fifo:
            // A placeholder: debugfs replaces it with the node (no privileges needed here).
            do { _ = try OwnedFD(at: dir, name, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600, what: relPath) } catch {
                throw .system(error)
            }
            try account(256)
            let kind: EntryMetadata.Kind
            switch entry.kind {
            case .characterDevice: kind = .characterDevice(major: entry.deviceMajor, minor: entry.deviceMinor)
            case .blockDevice: kind = .blockDevice(major: entry.deviceMajor, minor: entry.deviceMinor)
            default: kind = .fifo
            }
            entries[relPath] = metadata(entry, kind: kind)
        }
        createdInLayer.insert(relPath)
    }

    /// Reads a regular file of the tree, at most `limit` bytes; nil when it is
    /// not there or not a regular file (it is never followed through a link).
    func readSmallFile(_ relPath: String, limit: Int) -> [UInt8]? {
        guard let parts = try? Self.components(relPath, layer: ""), let name = parts.last,
              let dir = try? openDirectory(parts.dropLast(), create: false, layer: "", entry: relPath) else { return nil }
        guard let file = try? OwnedFD(at: dir.raw, name, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK, what: relPath) else { return nil }
        var st = stat()
        guard fstat(file.raw, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= limit else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { b in (try? readFully(file.raw, into: b, offset: 0)) ?? -1 }
        guard n >= 0 else { return nil }
        return Array(bytes.prefix(n))
    }

    /// Whether `relPath` names something in the tree as the guest would
    /// resolve it: symbolic links on the way are followed inside the tree
    /// (`/bin/sh` is there when `/bin` links to `usr/bin`).
    func contains(_ relPath: String) -> Bool {
        var pending = relPath.split(separator: "/").map(String.init)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == "." || part.isEmpty { continue }
            if part == ".." { _ = resolved.popLast(); continue }
            let path = (resolved + [part]).joined(separator: "/")
            guard let meta = entries[path] else { return false }
            // The last component may itself be a link: the guest follows it, but it is there.
            if meta.kind == .symlink && !pending.isEmpty {
                hops += 1
                guard hops <= 40, let target = linkTarget(path) else { return false }
                if target.hasPrefix("/") { resolved = [] }
                pending = target.split(separator: "/").map(String.init) + pending
            } else {
                resolved.append(part)
            }
        }
        return true
    }

    /// A symbolic link's target, as staged.
    private func linkTarget(_ relPath: String) -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { c in c.baseAddress.map { readlinkat(root.raw, relPath, $0, c.count) } ?? -1 }
        }
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
    }

    // MARK: - Paths

    /// An archive path as components below the root: "./a//b/" is ["a", "b"].
    /// An absolute path or a `..` is refused, never cleaned up: the image is wrong.
    static func components(_ path: String, layer: String) throws(ImageError) -> [String] {
        if path.hasPrefix("/") { throw .unsafeEntry(layer: layer, path: path, reason: "an absolute path") }
        var parts: [String] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { throw .unsafeEntry(layer: layer, path: path, reason: "'..' in the path") }
            if part.utf8.count > 255 { throw .unsupportedEntry(path: path, reason: "a name longer than 255 bytes") }
            // debugfs takes one command per line.
            if part.utf8.contains(where: { $0 == 0x0a || $0 == 0x0d || $0 == 0 }) {
                throw .unsupportedEntry(path: path, reason: "a line break in a name")
            }
            parts.append(String(part))
        }
        return parts
    }

    /// Opens the directory at `parts` below the root, creating missing ones
    /// (as the image's implicit parents) when `create`. A component that is a
    /// symbolic link or not a directory is refused: the entry would be
    /// written through it. nil when it is missing and `create` is false.
    private func openDirectory(_ parts: ArraySlice<String>, create: Bool, layer: String, entry: String) throws(ImageError) -> OwnedFD? {
        var current: OwnedFD
        do { current = try OwnedFD(at: root.raw, ".", flags: O_RDONLY | O_DIRECTORY, what: "staging root") } catch { throw .system(error) }
        var rel = ""
        for part in parts {
            rel = rel.isEmpty ? part : rel + "/" + part
            var st = stat()
            if fstatat(current.raw, part, &st, AT_SYMLINK_NOFOLLOW) != 0 {
                guard errno == ENOENT else { throw .system(.last("fstatat(\(rel))")) }
                guard create else { return nil }
                guard mkdirat(current.raw, part, 0o755) == 0 else { throw .system(.last("mkdirat(\(rel))")) }
                if entries[rel] == nil { entries[rel] = .implicitDirectory }
                createdInLayer.insert(rel)
            } else if (st.st_mode & S_IFMT) == S_IFLNK {
                throw .unsafeEntry(layer: layer, path: entry, reason: "it goes through the symbolic link '\(rel)'")
            } else if (st.st_mode & S_IFMT) != S_IFDIR {
                throw .unsafeEntry(layer: layer, path: entry, reason: "'\(rel)' is not a directory")
            }
            do { current = try OwnedFD(at: current.raw, part, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, what: rel) } catch { throw .system(error) }
        }
        return current
    }

    // MARK: - Changes

    private func metadata(_ entry: TarEntry, kind: EntryMetadata.Kind) -> EntryMetadata {
        EntryMetadata(kind: kind, mode: entry.mode & 0o7777, uid: entry.uid, gid: entry.gid,
                      modificationTime: entry.modificationTime, xattrs: entry.xattrs)
    }

    private func account(_ bytes: UInt64) throws(ImageError) {
        estimatedBytes &+= bytes
        guard estimatedBytes <= maxBytes else {
            throw .invalid(what: "root filesystem", reason: "unpacks to more than \(maxBytes >> 30) GiB")
        }
    }

    private func writeFile<S: ByteSource>(_ name: String, in dir: Int32, relPath: String, size: UInt64,
                                          from reader: inout TarReader<S>, layer: String) throws(ImageError) {
        try account((size + 4095) & ~4095 + 256)
        let file: OwnedFD
        do { file = try OwnedFD(at: dir, name, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600, what: relPath) } catch { throw .system(error) }
        while true {
            let n: Int
            do { n = try reader.readData(into: buffer) } catch { throw .tar(what: layer, error) }
            if n == 0 { break }
            do { try writeAll(file.raw, UnsafeRawBufferPointer(rebasing: buffer[0..<n])) } catch { throw .system(error) }
        }
    }

    /// The names in a directory, without "." and "..".
    private func listDirectory(_ dir: Int32, at relPath: String) throws(ImageError) -> [String] {
        guard let names = directoryNames(dir) else { throw .system(.last("opendir(\(relPath))")) }
        return names
    }

    /// Removes `name` in `dir`, a directory with everything below it, and forgets their metadata.
    private func remove(_ name: String, in dir: Int32, relPath: String) throws(ImageError) {
        var st = stat()
        guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { entries[relPath] = nil; return }
            throw .system(.last("fstatat(\(relPath))"))
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            let child: OwnedFD
            do { child = try OwnedFD(at: dir, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, what: relPath) } catch { throw .system(error) }
            for entry in try listDirectory(child.raw, at: relPath) {
                try remove(entry, in: child.raw, relPath: relPath + "/" + entry)
            }
            guard unlinkat(dir, name, AT_REMOVEDIR) == 0 else { throw .system(.last("rmdir(\(relPath))")) }
        } else {
            guard unlinkat(dir, name, 0) == 0 else { throw .system(.last("unlink(\(relPath))")) }
        }
        entries[relPath] = nil
        createdInLayer.remove(relPath)
    }
}
