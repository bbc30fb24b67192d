import Glibc
import SwiftletPersist
import SwiftletSys
import SwiftletX86

/// Which file a snapshot was taken with: its content hash, and its inode
/// identity as a shortcut.
///
/// Checking a file re-hashes it only when its inode identity changed: the
/// change time (`ctime`) moves with every write and every `utimes`, and no
/// user can set it back, so an unchanged (dev, ino, size, ctime) means unchanged
/// bytes. A copied or rebuilt file is hashed and accepted when its content matches.
public struct FileIdentity: Sendable, Equatable {
    /// SHA-256 of the whole file.
    public var sha256: [UInt8]
    public var size: UInt64
    public var device: UInt64
    public var inode: UInt64
    public var ctimeNanos: UInt64

    /// Hashes the file at `path` (following symbolic links).
    public static func of(_ path: String) throws(SnapshotError) -> FileIdentity {
        let file = try Snapshot.open(path)
        return try of(fd: file.raw, path: path)
    }

    /// Hashes the open file `fd` (named `path` in errors), read with pread.
    static func of(fd: Int32, path: String) throws(SnapshotError) -> FileIdentity {
        let st = try stat(fd, path)
        let (digest, size): ([UInt8], UInt64)
        do { (digest, size) = try SHA256.hash(fileDescriptor: fd) } catch { throw .system(error) }
        return FileIdentity(sha256: digest, size: size, device: UInt64(st.st_dev), inode: UInt64(st.st_ino),
                            ctimeNanos: nanos(st.st_ctim))
    }

    /// Checks that the open file `fd` (the descriptor the machine goes on to
    /// use, so the file cannot be swapped between check and use) has the
    /// content this identity recorded.
    public func check(fd: Int32, path: String, what: String) throws(SnapshotError) {
        let st = try Self.stat(fd, path)
        if UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode && UInt64(st.st_size) == size && Self.nanos(st.st_ctim) == ctimeNanos {
            return
        }
        guard UInt64(st.st_size) == size, try Self.of(fd: fd, path: path).sha256 == sha256 else {
            throw .mismatch("\(what) \(path) is not the one the snapshot was taken with (sha256 \(SHA256.hex(sha256).prefix(16))...)")
        }
    }

    /// Checks the file at `path` (opened for the check alone).
    public func check(_ path: String, what: String) throws(SnapshotError) {
        let file = try Snapshot.open(path)
        try check(fd: file.raw, path: path, what: what)
    }

    private static func stat(_ fd: Int32, _ path: String) throws(SnapshotError) -> stat {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw .system(.last("fstat(\(path))")) }
        return st
    }

    private static func nanos(_ t: timespec) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec) }
}

extension FileIdentity: PersistentState {
    public func save(to w: inout StateWriter) {
        w.bytes(sha256)
        w.u64(size)
        w.u64(device)
        w.u64(inode)
        w.u64(ctimeNanos)
    }

    public init(from r: inout StateReader) throws(StateError) {
        let hash = try r.bytes(limit: 32)
        guard hash.count == 32 else { throw StateError("a file hash of \(hash.count) bytes") }
        self.init(sha256: hash, size: try r.u64(), device: try r.u64(), inode: try r.u64(), ctimeNanos: try r.u64())
    }
}
