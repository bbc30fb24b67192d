import Glibc
import SwiftletSys

/// A host cache of decompressed kernels, so a bzImage is decompressed once
/// rather than at every boot.
///
/// Layout under `directory`:
/// - `vmlinux/<sha256 of the bzImage>.elf`: the decompressed ELF, named by content.
/// - `index/<dev>-<ino>-<size>-<mtime s>.<mtime ns>`: the content hash of the file
///   with that identity, so an unchanged file is not even re-hashed.
///
/// Files are written atomically (temporary file, then rename). Failing to
/// write the cache (read-only directory, full disk) never fails the boot.
public struct KernelCache: Sendable {
    /// The cache root.
    public let directory: String

    /// Bytes read up front to parse the setup header on the fast path.
    static let headerPrefix = 0x1000

    public init(directory: String) {
        self.directory = directory
    }

    /// The vmlinux ELF for the kernel image at `path`, and its setup header
    /// if it is a bzImage (the zero page needs the header; it is parsed from
    /// the image every time since it is tiny).
    ///
    /// An ELF is returned as read. A bzImage is looked up in the cache by file
    /// identity, then by content hash, and decompressed only on a miss.
    public func vmlinux(forImageAt path: String) throws(X86BootError) -> (elf: [UInt8], setupHeader: SetupHeader?) {
        let (source, header) = try vmlinuxSource(forImageAt: path)
        switch source {
        case let .bytes(elf): return (elf, header)
        case let .file(elfPath):
            do { return (try readFile(elfPath), header) } catch { throw .io(error) }
        }
    }

    /// Where the vmlinux for an image is: a file to map, or bytes in memory.
    public enum Source: Sendable {
        /// An ELF file on disk: the image itself, or its cached decompression.
        case file(String)
        /// A decompressed ELF that could not be cached.
        case bytes([UInt8])
    }

    /// Like `vmlinux(forImageAt:)`, but names the ELF file instead of reading
    /// it whenever one exists, so the loader can map it: on a cache hit
    /// nothing but the image's first page and the index file is read.
    public func vmlinuxSource(forImageAt path: String) throws(X86BootError) -> (source: Source, setupHeader: SetupHeader?) {
        let fd: OwnedFD
        do { fd = try OwnedFD(opening: path, flags: O_RDONLY) } catch { throw .io(error) }
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw .io(.last("fstat(\(path))")) }
        let fileSize = Int(st.st_size)

        // The first page tells ELF from bzImage and holds the whole setup header.
        let prefix = try read(fd.raw, count: min(fileSize, Self.headerPrefix), path: path)
        let isELF = prefix.withUnsafeBytes { ELFLoader.isELF($0) }
        if isELF { return (.file(path), nil) }
        let header = try SetupHeader.parse(prefix, fileLength: fileSize)

        // Fast path: same file as last time, by identity.
        let indexPath = directory + "/index/" + Self.identity(st)
        if let hash = readSmallFile(indexPath), Self.isHexDigest(hash), access(elfPath(hash), R_OK) == 0 {
            return (.file(elfPath(hash)), header)
        }

        // Slow path: hash the content; another path may have cached it already.
        let image = try read(fd.raw, count: fileSize, path: path)
        let hash = SHA256.hex(SHA256.hash(image))
        if access(elfPath(hash), R_OK) != 0 {
            let elf = try KernelImage.parse(image).vmlinux()
            store(elf, at: elfPath(hash), directory: directory + "/vmlinux")
            if access(elfPath(hash), R_OK) != 0 { return (.bytes(elf), header) }
        }
        store(Array(hash.utf8), at: indexPath, directory: directory + "/index")
        return (.file(elfPath(hash)), header)
    }

    /// Where the ELF for content hash `hash` lives.
    public func elfPath(_ hash: String) -> String {
        directory + "/vmlinux/" + hash + ".elf"
    }

    /// The index file name for a file's identity: device, inode, size and
    /// modification time, which change whenever the file is replaced or written.
    static func identity(_ st: stat) -> String {
        "\(st.st_dev)-\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    static func isHexDigest(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }

    /// Reads `count` bytes from the start of `fd`; a file that shrank meanwhile is an error.
    private func read(_ fd: Int32, count: Int, path: String) throws(X86BootError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n: Int
        do {
            n = try bytes.withMutableBytes { (b) throws(SystemError) in try readFully(fd, into: b, offset: 0) }
        } catch {
            throw .io(error)
        }
        guard n == count else { throw .io(SystemError("read(\(path)): file shrank while reading", errno: EIO)) }
        return bytes
    }

    /// The contents of a small text file, or nil if it cannot be read.
    private func readSmallFile(_ path: String) -> String? {
        guard let bytes = try? readFile(path), bytes.count <= 128 else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `mkdir -p`, for absolute and relative paths alike.
    static func makeDirectories(_ path: String) throws(SystemError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += component
            if mkdir(prefix, 0o755) != 0 && Glibc.errno != EEXIST { throw .last("mkdir(\(prefix))") }
            prefix += "/"
        }
    }

    /// Best-effort atomic write: caching is an optimisation, never a reason to fail.
    private func store(_ bytes: [UInt8], at path: String, directory: String) {
        do {
            try Self.makeDirectories(directory)
            try bytes.withBytes { (b) throws(SystemError) in try writeFileAtomically(path, b) }
        } catch {
            // Read-only or full: boot without the cache.
        }
    }
}
