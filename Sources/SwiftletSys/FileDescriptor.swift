import CSwiftlet
import Glibc

/// An owned file descriptor, closed when the owner goes away.
///
/// Noncopyable, so exactly one owner closes it; `borrow` the raw value for calls.
public struct OwnedFD: ~Copyable, Sendable {
    /// The raw descriptor. Valid while `self` lives.
    public let raw: Int32

    /// Takes ownership of `raw`.
    public init(taking raw: Int32) { self.raw = raw }

    /// Opens `path` with `O_CLOEXEC` added to `flags`.
    public init(opening path: String, flags: Int32, mode: mode_t = 0) throws(SystemError) {
        let fd = try retryingEINTR("open(\(path))") { open(path, flags | O_CLOEXEC, mode) }
        self.raw = fd
    }

    /// Opens `name` relative to the directory `dir` (`openat`), with
    /// `O_CLOEXEC` added; `what` names it in the error.
    public init(at dir: Int32, _ name: String, flags: Int32, mode: mode_t = 0, what: @autoclosure () -> String) throws(SystemError) {
        raw = try retryingEINTR("openat(\(what()))") { openat(dir, name, flags | O_CLOEXEC, mode) }
    }

    /// Gives up ownership without closing.
    public consuming func release() -> Int32 {
        let fd = raw
        discard self
        return fd
    }

    deinit { _ = close(raw) }
}

/// Both ends of a pipe, each owned.
public struct Pipe: ~Copyable, Sendable {
    public let read: OwnedFD
    public let write: OwnedFD

    /// `flags`: `O_NONBLOCK`, `O_DIRECT`; `O_CLOEXEC` is always added.
    public init(flags: Int32 = 0) throws(SystemError) {
        var fds: [Int32] = [-1, -1]
        guard swl_pipe2(&fds, flags | O_CLOEXEC) == 0 else { throw .last("pipe2") }
        read = OwnedFD(taking: fds[0])
        write = OwnedFD(taking: fds[1])
    }

    /// The read end, once a child holds its copy of the write end: ours closes.
    public consuming func keepingRead() -> OwnedFD { read }

    /// The write end, once a child holds its copy of the read end: ours closes.
    public consuming func keepingWrite() -> OwnedFD { write }
}

/// Reads until `buffer` is full or EOF. Returns the bytes read.
public func readFully(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(SystemError) -> Int {
    var done = 0
    while done < buffer.count {
        let n = try retryingEINTR("pread") {
            pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
        }
        if n == 0 { break }
        done += n
    }
    return done
}

/// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
    var done = 0
    while done < bytes.count {
        let n = try retryingEINTR("write") { write(fd, bytes.baseAddress! + done, bytes.count - done) }
        done += n
    }
}

/// Writes `line` and a newline to `fd`: one write(2) where it fits, no stdio
/// buffering, so nothing is lost when the process exits or execs right after.
/// A diagnostic that cannot be written is dropped.
public func writeLine(_ line: String, to fd: Int32) {
    let bytes = Array((line + "\n").utf8)
    bytes.withUnsafeBytes { try? writeAll(fd, $0) }
}

/// Reads the whole of the file at `path`.
public func readFile(_ path: String) throws(SystemError) -> [UInt8] {
    let fd = try OwnedFD(opening: path, flags: O_RDONLY)
    var st = stat()
    guard fstat(fd.raw, &st) == 0 else { throw .last("fstat(\(path))") }
    let size = Int(st.st_size)
    var bytes = [UInt8](repeating: 0, count: size)
    let raw = fd.raw
    let n = try bytes.withUnsafeMutableBytes { buf in
        Result { () throws(SystemError) in try readFully(raw, into: buf, offset: 0) }
    }.get()
    if n < size { bytes.removeLast(size - n) }
    return bytes
}

/// Reads `path` until EOF, for files whose size `fstat` does not know
/// (such as those under /proc).
public func readToEnd(_ path: String) throws(SystemError) -> [UInt8] {
    let fd = try OwnedFD(opening: path, flags: O_RDONLY)
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let raw = fd.raw
        let n = try chunk.withUnsafeMutableBytes { buf in
            Result { () throws(SystemError) in try retryingEINTR("read(\(path))") { read(raw, buf.baseAddress, buf.count) } }
        }.get()
        if n == 0 { return out }
        out += chunk[0..<n]
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, renamed into place, so readers never see a partial file.
public func writeFileAtomically(_ path: String, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
    let tmp = path + ".tmp.\(getpid())"
    do throws(SystemError) {
        let fd = try OwnedFD(opening: tmp, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
        try writeAll(fd.raw, bytes)
    } catch {
        unlink(tmp)
        throw error
    }
    guard rename(tmp, path) == 0 else {
        let e = SystemError.last("rename(\(tmp))")
        unlink(tmp)
        throw e
    }
}

/// Creates `path` and its parents (like `mkdir -p`).
public func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(SystemError) {
    // Keep a relative path relative: only an absolute one starts with "/".
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/", omittingEmptySubsequences: true) {
        // String + String: `"/" + component` (a Substring) is a generic
        // append that resolves an associated type at run time, whose first
        // look-up scans every protocol conformance in the binary.
        prefix += "/"
        prefix += String(component)
        if mkdir(prefix, mode) != 0 && Glibc.errno != EEXIST {
            throw .last("mkdir(\(prefix))")
        }
    }
}

extension Optional where Wrapped == OwnedFD {
    /// The raw descriptor, or -1 for none: what C calls take for "no fd".
    public var rawOrNone: Int32 {
        switch self {
        case .some(let fd): fd.raw
        case .none: -1
        }
    }
}
