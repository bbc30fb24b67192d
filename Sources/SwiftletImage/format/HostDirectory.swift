import Glibc
import SwiftletSys
import SwiftletX86

/// A root filesystem that is a directory on the host. mkfs.ext4 copies it
/// as it is: owners, modes, device nodes, hard links and xattrs (so reading
/// another user's files needs the rights to). Nothing in it is followed.
enum HostDirectory {
    /// One walk of the tree: the digest of its metadata (every entry's
    /// path, type, mode, owner, size, inode and modification and change
    /// times, and each link's target: a changed file changes its change time,
    /// so its digest; the data itself is not read on every run), and the
    /// room and entries its ext4 image needs.
    struct Scan {
        var digest: String
        var bytes: UInt64
        var entries: Int
    }

    static func scan(_ path: String) throws(ImageError) -> Scan {
        var sha = SHA256()
        let root: OwnedFD
        do { root = try OwnedFD(opening: path, flags: O_RDONLY | O_DIRECTORY) } catch {
            throw .badReference(path, reason: String(cString: strerror(error.errno)))
        }
        var count = 0
        var bytes: UInt64 = 0
        try walk(root.raw, "", depth: 0, count: &count) { rel, st, target in
            let line = "\(rel)\0\(st.st_mode) \(st.st_uid) \(st.st_gid) \(st.st_size) \(st.st_ino) \(st.st_rdev) "
                + "\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) \(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)\0\(target)\n"
            sha.update(Array(line.utf8))
            bytes &+= (UInt64(max(st.st_size, 0)) + 4095) & ~4095 + 256
        }
        return Scan(digest: SHA256.hex(sha.finalize()), bytes: bytes, entries: count)
    }

    /// A regular file of the tree, reached without following links; nil otherwise.
    static func readSmallFile(_ path: String, _ rel: String) -> [UInt8]? {
        inParent(path, rel) { dir, name in try? Blob.readDocument(at: dir, name, what: rel) }
    }

    /// Whether the tree has `rel`, reached without following links.
    static func contains(_ path: String, _ rel: String) -> Bool {
        inParent(path, rel) { dir, name in
            var st = stat()
            return fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0
        } ?? false
    }

    /// `body` on the directory holding `rel` (opened component by component,
    /// `O_NOFOLLOW`) and its last name; nil when a component cannot be opened.
    private static func inParent<T>(_ path: String, _ rel: String, _ body: (Int32, String) -> T?) -> T? {
        let parts = rel.split(separator: "/").map(String.init)
        guard let name = parts.last, !parts.contains(".."), !parts.contains(".") else { return nil }
        guard var dir = try? OwnedFD(opening: path, flags: O_RDONLY | O_DIRECTORY) else { return nil }
        for part in parts.dropLast() {
            guard let next = try? OwnedFD(at: dir.raw, part, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, what: part) else { return nil }
            dir = next
        }
        return body(dir.raw, name)
    }

    /// Visits every entry below `dir` (sorted, so the digest is stable), never following a link.
    private static func walk(_ dir: Int32, _ prefix: String, depth: Int, count: inout Int,
                             _ visit: (String, stat, String) -> Void) throws(ImageError) {
        guard depth < 256 else { throw .invalid(what: prefix, reason: "directories nested over 256 deep") }
        guard let names = directoryNames(dir) else { throw .system(.last("opendir(\(prefix.isEmpty ? "." : prefix))")) }
        for name in names.sorted() {
            let rel = prefix.isEmpty ? name : prefix + "/" + name
            var st = stat()
            guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw .system(.last("fstatat(\(rel))")) }
            count += 1
            var target = ""
            if st.st_mode & S_IFMT == S_IFLNK {
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = buf.withUnsafeMutableBufferPointer { b in
                    b.withMemoryRebound(to: CChar.self) { c in c.baseAddress.map { readlinkat(dir, name, $0, c.count) } ?? -1 }
                }
                if n > 0 { target = String(decoding: buf[0..<n], as: UTF8.self) }
            }
            visit(rel, st, target)
            if st.st_mode & S_IFMT == S_IFDIR {
                let child: OwnedFD
                do { child = try OwnedFD(at: dir, name, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW, what: rel) } catch { throw .system(error) }
                try walk(child.raw, rel, depth: depth + 1, count: &count, visit)
            }
        }
    }
}

/// Files read out of an ext4 image used as it is (debugfs, no mount).
enum Ext4Files {
    /// The image's /etc/passwd and /etc/group, as far as they can be read.
    static func users(of image: String, scratch: String) -> UserDatabase {
        UserDatabase(passwd: dump(image, "/etc/passwd", scratch: scratch), group: dump(image, "/etc/group", scratch: scratch))
    }

    private static func dump(_ image: String, _ path: String, scratch: String) -> [UInt8]? {
        guard let debugfs = try? HostTool.find("debugfs") else { return nil }
        let out = scratch + "/.dump-\(getpid())"
        unlink(out)
        defer { unlink(out) }
        guard (try? HostTool.run([debugfs, "-R", "dump \(Ext4Writer.quote(path)) \(Ext4Writer.quote(out))", image])) != nil else { return nil }
        return try? Blob.readDocument(at: AT_FDCWD, out, what: path)
    }
}
