import Glibc
import SwiftletSys
import SwiftletX86

/// A content descriptor (image-spec `descriptor.md`): what a blob must be.
struct Descriptor: Equatable {
    var mediaType: String
    /// The SHA-256 as 64 lowercase hex digits (the only algorithm Swiftlet takes).
    var hex: String
    var size: UInt64
    /// `org.opencontainers.image.ref.name`, in an index.
    var refName: String?
    /// `platform.os` and `platform.architecture`, in an index.
    var platform: (os: String, architecture: String)?

    var digest: String { "sha256:" + hex }

    static func == (a: Descriptor, b: Descriptor) -> Bool {
        a.mediaType == b.mediaType && a.hex == b.hex && a.size == b.size && a.refName == b.refName
    }

    static func parse(_ json: JSONValue, what: String) throws(ImageError) -> Descriptor {
        guard json.object != nil else { throw .invalid(what: what, reason: "a descriptor is not an object") }
        let mediaType = json["mediaType"]?.string ?? ""
        guard let digest = json["digest"]?.string else { throw .invalid(what: what, reason: "a descriptor has no digest") }
        guard let size = json["size"]?.int64, size >= 0 else { throw .invalid(what: what, reason: "a descriptor has no valid size") }
        let hex = try hexDigest(digest, what: what)
        var d = Descriptor(mediaType: mediaType, hex: hex, size: UInt64(size))
        d.refName = json["annotations"]?["org.opencontainers.image.ref.name"]?.string
        if let p = json["platform"], let os = p["os"]?.string, let arch = p["architecture"]?.string { d.platform = (os, arch) }
        return d
    }

    /// The hex of a `sha256:` digest. Anything else is refused: the hex
    /// becomes a file name, so it must be exactly 64 lowercase hex digits.
    static func hexDigest(_ digest: String, what: String) throws(ImageError) -> String {
        guard digest.hasPrefix("sha256:") else { throw .invalid(what: what, reason: "digest '\(digest)' is not sha256 (the only algorithm supported)") }
        let hex = String(digest.dropFirst(7))
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            throw .invalid(what: what, reason: "digest '\(digest)' is malformed")
        }
        return hex
    }
}

/// Reading blobs, always against what describes them.
enum Blob {
    /// Most a manifest, index or configuration may be: they are read whole.
    static let maxDocumentBytes = 4 << 20

    /// The lowercase hex SHA-256 of everything `fd` holds, and the byte count.
    static func sha256(of fd: Int32) throws(ImageError) -> (hex: String, count: UInt64) {
        do {
            let (digest, count) = try SHA256.hash(fileDescriptor: fd)
            return (SHA256.hex(digest), count)
        } catch { throw .system(error) }
    }

    /// Checks that `fd` holds exactly the blob `d` describes.
    static func verify(_ fd: Int32, against d: Descriptor, what: String) throws(ImageError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .system(.last("fstat(\(what))")) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .invalid(what: what, reason: "the blob is not a regular file") }
        // The size first: a truncated blob is refused without reading it.
        guard UInt64(st.st_size) == d.size else { throw .sizeMismatch(what: what, expected: d.size, actual: UInt64(st.st_size)) }
        let (hex, count) = try sha256(of: fd)
        guard count == d.size else { throw .sizeMismatch(what: what, expected: d.size, actual: count) }
        guard hex == d.hex else { throw .digestMismatch(what: what, expected: d.digest, actual: "sha256:" + hex) }
    }

    /// Reads a whole small file (`O_NOFOLLOW`), at most `maxDocumentBytes`.
    static func readDocument(at dirFD: Int32, _ name: String, what: String) throws(ImageError) -> [UInt8] {
        let file: OwnedFD
        do { file = try OwnedFD(at: dirFD, name, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK, what: what) } catch {
            if error.errno == ENOENT { throw .invalid(what: what, reason: "missing") }
            throw .system(error)
        }
        return try readDocument(file.raw, what: what)
    }

    static func readDocument(_ fd: Int32, what: String) throws(ImageError) -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .system(.last("fstat(\(what))")) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .invalid(what: what, reason: "not a regular file") }
        guard st.st_size <= maxDocumentBytes else { throw .invalid(what: what, reason: "larger than \(maxDocumentBytes >> 20) MiB") }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let r = bytes.withUnsafeMutableBytes { b in Result { () throws(SystemError) in try readFully(fd, into: b, offset: 0) } }
        switch r {
        case let .success(n): return Array(bytes.prefix(n))
        case let .failure(e): throw .system(e)
        }
    }
}

/// Applies one layer (a tar stream, compressed or not) to the tree.
func applyLayer<S: ByteSource>(_ source: consuming S, to tree: StagingTree, layer: String, whiteouts: Bool) throws(ImageError) {
    let decompressed: DecompressingSource<S>
    do { decompressed = try DecompressingSource(source) } catch { throw .stream(what: layer, error) }
    var reader = TarReader(decompressed)
    tree.beginLayer()
    while true {
        let entry: TarEntry?
        do { entry = try reader.next() } catch { throw .tar(what: layer, error) }
        guard let entry else { break }
        try tree.apply(entry, from: &reader, layer: layer, whiteouts: whiteouts)
    }
}
