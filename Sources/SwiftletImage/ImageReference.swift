import Glibc
import SwiftletSys

/// What `--image REF` names. A prefix says the format; without one, the
/// file or directory itself does: an `oci-layout` file makes a directory an
/// OCI layout, the ext4 magic makes a file an ext4 image, a tar with a
/// top-level `manifest.json` is a `docker save` archive, and any other tar
/// (plain, gzip or zstd) is a root filesystem.
public enum ImageReference: Equatable, Sendable, CustomStringConvertible {
    case ociLayout(directory: String, tag: String?)
    case dockerArchive(path: String)
    case tarball(path: String)
    case directory(path: String)
    case ext4(path: String)
    /// A file that is not ext4: a docker archive or a tarball, which only
    /// reading it tells (`ImageCache` does, once per file identity).
    case file(path: String)

    public static let formats = "oci:DIR[:TAG], docker-archive:FILE, tar:FILE, dir:DIR, ext4:FILE, or a path"

    public static func parse(_ text: String) throws(ImageError) -> ImageReference {
        guard !text.isEmpty, !text.utf8.contains(0) else { throw .badReference(text, reason: "empty") }
        if text.hasPrefix("oci:") {
            var rest = String(text.dropFirst(4))
            var tag: String?
            // The tag follows the last ':' that comes after the last '/'.
            if let colon = rest.lastIndex(of: ":"), !rest[colon...].contains("/") {
                tag = String(rest[rest.index(after: colon)...])
                rest = String(rest[..<colon])
                if tag?.isEmpty == true { tag = nil }
            }
            try requireKind(rest, S_IFDIR, text)
            return .ociLayout(directory: absolute(rest), tag: tag)
        }
        for (prefix, make) in [("docker-archive:", ImageReference.dockerArchive), ("tar:", ImageReference.tarball),
                               ("ext4:", ImageReference.ext4)] as [(String, (String) -> ImageReference)] where text.hasPrefix(prefix) {
            let path = String(text.dropFirst(prefix.count))
            try requireKind(path, S_IFREG, text)
            return make(absolute(path))
        }
        if text.hasPrefix("dir:") {
            let path = String(text.dropFirst(4))
            try requireKind(path, S_IFDIR, text)
            return .directory(path: absolute(path))
        }
        var st = stat()
        guard stat(text, &st) == 0 else { throw .badReference(text, reason: String(cString: strerror(errno)) + " (formats: \(formats))") }
        let path = absolute(text)
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            return access(text + "/oci-layout", F_OK) == 0 ? .ociLayout(directory: path, tag: nil) : .directory(path: path)
        case S_IFREG:
            return try classifyFile(path)
        default:
            throw .badReference(text, reason: "not a regular file or a directory")
        }
    }

    public var description: String {
        switch self {
        case let .ociLayout(d, tag): return "oci:" + d + (tag.map { ":" + $0 } ?? "")
        case let .dockerArchive(p): return "docker-archive:" + p
        case let .tarball(p): return "tar:" + p
        case let .directory(p): return "dir:" + p
        case let .ext4(p): return "ext4:" + p
        case let .file(p): return p
        }
    }

    /// An ext4 image (one read: the magic), else a file to classify.
    private static func classifyFile(_ path: String) throws(ImageError) -> ImageReference {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .badReference(path, reason: String(cString: strerror(errno))) }
        let file = OwnedFD(taking: fd)
        var magic = [UInt8](repeating: 0, count: 2)
        // The ext2/3/4 superblock magic 0xEF53, at 1024 + 56.
        if magic.withUnsafeMutableBytes({ b in (try? readFully(file.raw, into: b, offset: 1080)) ?? 0 }) == 2, magic == [0x53, 0xEF] {
            return .ext4(path: path)
        }
        return .file(path: path)
    }

    /// Whether the file is an uncompressed tar with a top-level
    /// `manifest.json` (the names are read; the data is skipped, by reading
    /// it: a tar has no index).
    static func isDockerArchive(_ path: String) throws(ImageError) -> Bool {
        let raw = open(path, O_RDONLY | O_CLOEXEC)
        guard raw >= 0 else { throw .badReference(path, reason: String(cString: strerror(errno))) }
        let file = OwnedFD(taking: raw)
        let fd = file.raw
        var head = [UInt8](repeating: 0, count: 4)
        let n = head.withUnsafeMutableBytes { b in (try? readFully(fd, into: b, offset: 0)) ?? 0 }
        if n == 4, head[0] == 0x1f && head[1] == 0x8b || head == [0x28, 0xb5, 0x2f, 0xfd] { return false }
        var reader = TarReader(FileSource(fd: fd))
        while true {
            let entry: TarEntry?
            do { entry = try reader.next() } catch { return false } // not a tar: reported as a tarball error later
            guard let entry else { return false }
            let name = entry.path.hasPrefix("./") ? String(entry.path.dropFirst(2)) : entry.path
            if name == "manifest.json" && entry.kind == .file { return true }
        }
    }

    private static func requireKind(_ path: String, _ kind: mode_t, _ text: String) throws(ImageError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .badReference(text, reason: String(cString: strerror(errno))) }
        guard st.st_mode & S_IFMT == kind else {
            throw .badReference(text, reason: kind == S_IFDIR ? "not a directory" : "not a regular file")
        }
    }

    private static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return cwd == "/" ? "/" + path : cwd + "/" + path
    }
}
