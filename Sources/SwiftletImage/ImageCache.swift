import Glibc
import SwiftletSys
import SwiftletX86

/// An image ready to boot: its ext4 root drive and what a run takes from it.
public struct PreparedImage: Sendable {
    /// Names the image's content: the OCI manifest digest, or the SHA-256 of
    /// a tarball or archive, or a digest of a directory's or ext4 file's
    /// metadata. Part of the cached snapshot's key.
    public var digest: String
    /// The ext4 image, attached ephemeral (an ext4 input is used in place).
    public var rootfsPath: String
    public var config: ImageConfig
    /// Programs the agent runs once before the snapshot (the image's shell and entrypoint).
    public var warmUp: [String]
    /// The image's accounts; read when asked (an ext4 image's through debugfs).
    public var users: UserDatabase { loadUsers() }
    let loadUsers: @Sendable () -> UserDatabase
}

/// The converted images, under `$SWIFTLET_IMAGE_CACHE` (else
/// `<cache>/images`): `v1/<key>/` holds `rootfs.ext4`, `image` (the
/// configuration) and the image's `passwd` and `group`. A conversion runs
/// under `<key>.lock` in `.tmp-<key>-<pid>/` beside the entry and is renamed
/// into place, so concurrent runs convert once and a failed conversion
/// leaves nothing. A file is hashed once per identity (`refs/`).
public enum ImageCache {
    /// Bumped when a conversion would produce a different image.
    static let version = "v1"
    /// What an image may unpack to before it is refused.
    public static let maxUnpackedBytes: UInt64 = 64 << 30

    public static func prepare(_ reference: ImageReference, cacheDirectory: String) throws(ImageError) -> PreparedImage {
        let root = cacheDirectory + "/" + version
        do { try makeDirectories(root + "/refs", mode: 0o755) } catch { throw .system(error) }
        switch reference {
        case let .ext4(path):
            // Used in place: only its identity is needed for the snapshot key.
            return PreparedImage(digest: "ext4-" + (try identityDigest(path)), rootfsPath: path, config: .plain,
                                 warmUp: ["/bin/sh"], loadUsers: { Ext4Files.users(of: path, scratch: root) })
        case let .ociLayout(directory, tag):
            let layout = try OCILayout(path: directory)
            let manifest = try layout.manifest(tag: tag)
            return try staged(key: "oci-" + manifest.hex, root: root) { tree throws(ImageError) in
                try layout.unpack(manifest, into: tree)
            }
        case let .dockerArchive(path):
            return try staged(key: "docker-" + (try contentDigest(path, root: root)), root: root) { tree throws(ImageError) in
                try DockerArchive(path: path).unpack(into: tree)
            }
        case let .tarball(path):
            return try staged(key: "tar-" + (try contentDigest(path, root: root)), root: root) { tree throws(ImageError) in
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw .badReference(path, reason: String(cString: strerror(errno))) }
                let file = OwnedFD(taking: fd)
                try applyLayer(FileSource(fd: file.raw), to: tree, layer: path, whiteouts: false)
                return .plain
            }
        case let .file(path):
            return try prepare(try fileKind(path, root: root), cacheDirectory: cacheDirectory)
        case let .directory(path):
            // mkfs.ext4 reads the directory as it is, owners, nodes and xattrs included.
            let scan = try HostDirectory.scan(path)
            let key = "dir-" + scan.digest
            return try cached(key: key, root: root) { _, rootfs throws(ImageError) in
                try Ext4Writer.format(path, to: rootfs, key: key, usedBytes: scan.bytes, entries: scan.entries, rootOwnedByRoot: false)
                return Converted(config: .plain, passwd: HostDirectory.readSmallFile(path, "etc/passwd"),
                                 group: HostDirectory.readSmallFile(path, "etc/group"), exists: { HostDirectory.contains(path, $0) })
            }
        }
    }

    /// What a conversion produced, beside the ext4 image.
    struct Converted {
        var config: ImageConfig
        var passwd: [UInt8]?
        var group: [UInt8]?
        /// Whether the image has this path (relative to its root).
        var exists: (String) -> Bool
    }

    /// An image whose layers are unpacked into a staging tree, then written as ext4.
    static func staged(key: String, root: String, unpack: (StagingTree) throws(ImageError) -> ImageConfig) throws(ImageError) -> PreparedImage {
        try cached(key: key, root: root) { work, rootfs throws(ImageError) in
            let tree = try StagingTree(path: work + "/tree", maxBytes: maxUnpackedBytes)
            let config = try unpack(tree)
            try Ext4Writer.write(tree, to: rootfs, workDirectory: work, key: key)
            return Converted(config: config, passwd: tree.readSmallFile("etc/passwd", limit: 1 << 20),
                             group: tree.readSmallFile("etc/group", limit: 1 << 20), exists: { tree.contains($0) })
        }
    }

    /// The entry for `key`, converted first when there is none: `convert`
    /// writes the ext4 image at its second argument, with its first as scratch space.
    static func cached(key: String, root: String, convert: (String, String) throws(ImageError) -> Converted) throws(ImageError) -> PreparedImage {
        let entry = root + "/" + key
        if let image = try? load(entry) { return image }
        let lock: FileLock
        do { lock = try FileLock(entry + ".lock") } catch { throw .system(error) }
        return try lock.whileHeld { () throws(ImageError) -> PreparedImage in
            if let image = try? load(entry) { return image }
            removeTree(entry)
            let work = root + "/.tmp-\(key)-\(getpid())"
            removeTree(work)
            defer { removeTree(work) }
            guard mkdir(work, 0o700) == 0, mkdir(work + "/entry", 0o755) == 0 else { throw .system(.last("mkdir(\(work))")) }
            let converted = try convert(work, work + "/entry/rootfs.ext4")
            let record = ImageRecord(digest: key, config: converted.config, warmUp: warmUpPrograms(converted.config, exists: converted.exists))
            try writeFile(work + "/entry/image", record.encoded())
            if let p = converted.passwd { try writeFile(work + "/entry/passwd", p) }
            if let g = converted.group { try writeFile(work + "/entry/group", g) }
            guard rename(work + "/entry", entry) == 0 else { throw .system(.last("rename(\(entry))")) }
            return try load(entry)
        }
    }

    /// A cached entry, marked used now (for `prune`).
    static func load(_ entry: String) throws(ImageError) -> PreparedImage {
        let d: OwnedFD
        do { d = try OwnedFD(opening: entry, flags: O_RDONLY | O_DIRECTORY) } catch { throw .system(error) }
        guard faccessat(d.raw, "rootfs.ext4", R_OK, 0) == 0 else { throw .system(.last("access(\(entry)/rootfs.ext4)")) }
        let record = try ImageRecord.decode(try Blob.readDocument(at: d.raw, "image", what: entry + "/image"))
        let passwd = try? Blob.readDocument(at: d.raw, "passwd", what: "passwd")
        let group = try? Blob.readDocument(at: d.raw, "group", what: "group")
        _ = futimens(d.raw, nil)
        return PreparedImage(digest: record.digest, rootfsPath: entry + "/rootfs.ext4", config: record.config,
                             warmUp: record.warmUp, loadUsers: { UserDatabase(passwd: passwd, group: group) })
    }

    /// Removes the entries not used for `days` days (and conversions that
    /// died), each under its lock, skipping one in use. Returns the keys removed.
    @discardableResult
    public static func prune(cacheDirectory: String, unusedForDays days: Double) -> [String] {
        var removed: [String] = []
        let cutoff = Double(time(nil)) - days * 86400
        // Earlier versions' entries are never used again.
        for name in listDirectory(cacheDirectory) where name != version && name.hasPrefix("v") {
            removeTree(cacheDirectory + "/" + name)
            removed.append(name)
        }
        let root = cacheDirectory + "/" + version
        for name in listDirectory(root) {
            let path = root + "/" + name
            if name.hasPrefix(".tmp-") {
                // `.tmp-<key>-<pid>`: its creator is gone when the pid is.
                if let pid = Int32(name.split(separator: "-").last ?? ""), kill(pid, 0) != 0 && errno == ESRCH { removeTree(path); removed.append(name) }
                continue
            }
            guard name != "refs", !name.hasSuffix(".lock") else { continue }
            var st = stat()
            guard stat(path, &st) == 0, Double(st.st_mtim.tv_sec) <= cutoff else { continue }
            // In use (being converted or read) when its lock is held.
            guard let lock = try? FileLock.ifFree(path + ".lock") else { continue }
            lock.whileHeld {
                removeTree(path)
                unlink(path + ".lock")
            }
            removed.append(name)
        }
        // File identities whose entry is gone.
        for name in listDirectory(root + "/refs") where !name.hasSuffix(".kind") {
            let ref = root + "/refs/" + name
            guard let key = try? Blob.readDocument(at: AT_FDCWD, ref, what: ref),
                  access(root + "/" + String(decoding: key, as: UTF8.self), F_OK) != 0 else { continue }
            unlink(ref)
        }
        return removed
    }

    // MARK: - Keys

    /// The SHA-256 of a file's bytes, remembered by the file's identity
    /// (device, inode, size, modification and change times) so that a file
    /// is read once, not on every run.
    static func contentDigest(_ path: String, root: String) throws(ImageError) -> String {
        let identity = try identityDigest(path)
        let ref = root + "/refs/" + identity
        if let known = try? Blob.readDocument(at: AT_FDCWD, ref, what: ref), known.count == 64 {
            return String(decoding: known, as: UTF8.self)
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .badReference(path, reason: String(cString: strerror(errno))) }
        let file = OwnedFD(taking: fd)
        let hex = try Blob.sha256(of: file.raw).hex
        // Only if the file did not change while it was read.
        if (try? identityDigest(path)) == identity {
            try? writeFile(ref, Array(hex.utf8))
        }
        return hex
    }

    /// A file's format, docker archive or tarball, remembered by the file's
    /// identity: telling them apart reads the whole tar.
    static func fileKind(_ path: String, root: String) throws(ImageError) -> ImageReference {
        let identity = try identityDigest(path)
        let ref = root + "/refs/" + identity + ".kind"
        if let known = try? Blob.readDocument(at: AT_FDCWD, ref, what: ref) {
            switch String(decoding: known, as: UTF8.self) {
            case "docker": return .dockerArchive(path: path)
            case "tar": return .tarball(path: path)
            default: break
            }
        }
        let docker = try ImageReference.isDockerArchive(path)
        if (try? identityDigest(path)) == identity { try? writeFile(ref, Array((docker ? "docker" : "tar").utf8)) }
        return docker ? .dockerArchive(path: path) : .tarball(path: path)
    }

    static func identityDigest(_ path: String) throws(ImageError) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .badReference(path, reason: String(cString: strerror(errno))) }
        let text = "\(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec):\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
        return SHA256.hex(SHA256.hash(Array(text.utf8)))
    }

    /// The shell, then the entrypoint's (or command's) program, when the
    /// image has them: found in the image as the job's PATH would find it.
    static func warmUpPrograms(_ config: ImageConfig, exists: (String) -> Bool) -> [String] {
        var programs: [String] = []
        // A directory with merged /usr has /bin as a link, which only a staged tree follows.
        if exists("bin/sh") || exists("usr/bin/sh") { programs.append("/bin/sh") }
        guard let program = config.defaultCommand.first, !program.isEmpty else { return programs }
        var found: String?
        if program.hasPrefix("/") {
            if exists(String(program.dropFirst())) { found = program }
        } else if !program.contains("/") {
            let path = config.environment.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) }
                ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            for dir in path.split(separator: ":") where dir.hasPrefix("/") {
                let candidate = dir.hasSuffix("/") ? dir + program : dir + "/" + program
                if exists(String(candidate.dropFirst())) { found = String(candidate); break }
            }
        }
        if let found, !programs.contains(found) { programs.append(found) }
        return programs
    }
}

/// Writes a whole file atomically.
func writeFile(_ path: String, _ bytes: [UInt8]) throws(ImageError) {
    let r = bytes.withUnsafeBytes { b in Result { () throws(SystemError) in try writeFileAtomically(path, b) } }
    if case let .failure(e) = r { throw .system(e) }
}
