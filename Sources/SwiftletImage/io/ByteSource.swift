// Byte sources: the one reading interface of the image readers (tar, the
// decompressors, digests), over a descriptor or over memory. Every byte comes
// from a file the user gave us, so every reader above checks what it reads.
import Glibc
import SwiftletSys

/// Why reading a stream failed.
public enum StreamError: Error, Equatable, CustomStringConvertible {
    /// A read(2) (or another call) failed with `errno`.
    case io(call: String, errno: Int32)
    /// The input ended before its format says it does.
    case truncated
    /// Not valid data of its format (one short reason).
    case corrupt(String)
    /// A declared size beyond a limit.
    case tooLarge(String)

    public var description: String {
        switch self {
        case .io(let call, let errno): return SystemError(call, errno: errno).description
        case .truncated: return "the data ends early (truncated)"
        case .corrupt(let reason): return "corrupt data: \(reason)"
        case .tooLarge(let what): return "too large: \(what)"
        }
    }
}

/// Bytes read in order.
public protocol ByteSource: ~Copyable {
    /// Reads up to `buffer.count` bytes into `buffer` and returns how many.
    /// Returns 0 only at the end of the source (or for an empty `buffer`).
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int
}

/// Reads a descriptor, which it does not own (the caller closes it), with
/// EINTR retried.
public struct FileSource: ByteSource {
    public let fd: Int32

    public init(fd: Int32) { self.fd = fd }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        let fd = self.fd
        // SAFETY: read(2) writes at most buffer.count bytes at base, which `buffer` owns.
        let n = retryingEINTR { Glibc.read(fd, base, buffer.count) }
        if n < 0 { throw .io(call: "read", errno: Glibc.errno) }
        return n
    }
}

/// A source over bytes in memory (tests, small blobs).
public struct BufferSource: ByteSource {
    public let bytes: [UInt8]
    /// The index of the next byte to read.
    public private(set) var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        let n = min(buffer.count, bytes.count - position)
        guard n > 0, let to = buffer.baseAddress else { return 0 }
        let from = position
        bytes.withUnsafeBytes { src in
            // n > 0 bytes are left, so the array is not empty and has an address.
            guard let base = src.baseAddress else { return }
            // SAFETY: from + n <= bytes.count and n <= buffer.count (the min above).
            memcpy(to, base + from, n)
        }
        position += n
        return n
    }
}

/// At most `limit` bytes of the inner source: a blob of known size inside a
/// file. It ends after `limit` bytes; an inner source that ends before that is
/// `.truncated`.
public struct LimitedSource<Inner: ByteSource>: ByteSource {
    public private(set) var inner: Inner
    /// Bytes left before the limit.
    public private(set) var remaining: UInt64

    public init(_ inner: consuming Inner, limit: UInt64) {
        self.inner = inner
        self.remaining = limit
    }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        guard remaining > 0, buffer.count > 0 else { return 0 }
        let want = remaining < UInt64(buffer.count) ? Int(remaining) : buffer.count
        // SAFETY: want <= buffer.count: the slice is inside the caller's buffer.
        let n = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
        guard n > 0 else { throw .truncated }
        guard n <= want else { throw .corrupt("a source returned more bytes than asked for") }
        remaining -= UInt64(n)
        return n
    }

    /// Gives back the inner source, positioned after what was read.
    public consuming func takeInner() -> Inner { inner }
}

/// The chunk size of the helpers below.
let ioChunk = 64 << 10

/// Reads the whole source into memory, failing with `.tooLarge` when it holds
/// more than `maxBytes` bytes.
public func readAll<S: ByteSource & ~Copyable>(_ source: inout S, maxBytes: Int) throws(StreamError) -> [UInt8] {
    let limit = max(maxBytes, 0)
    var out: [UInt8] = []
    // SAFETY: freed on every way out (defer), and used only inside this call.
    let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: ioChunk, alignment: 16)
    defer { chunk.deallocate() }
    while true {
        let room = limit - out.count
        // Ask for one byte beyond the limit, to tell "exactly maxBytes" from "more".
        let want = room < ioChunk ? room + 1 : ioChunk
        // SAFETY: want <= ioChunk, the chunk's size.
        let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<want]))
        if n == 0 { return out }
        guard n <= want else { throw .corrupt("a source returned more bytes than asked for") }
        if n > room { throw .tooLarge("more than \(limit) bytes") }
        // SAFETY: the source initialized chunk[0..<n] (n <= want <= its size).
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
    }
}

/// Reads the source to its end, discarding the bytes, and returns how many
/// there were (for a `HashingSource` whose digest is checked at the end).
@discardableResult
public func discardAll<S: ByteSource & ~Copyable>(_ source: inout S) throws(StreamError) -> UInt64 {
    var total: UInt64 = 0
    // SAFETY: freed on every way out (defer), and used only inside this call.
    let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: ioChunk, alignment: 16)
    defer { chunk.deallocate() }
    while true {
        let n = try source.read(into: chunk)
        if n == 0 { return total }
        guard n <= ioChunk else { throw .corrupt("a source returned more bytes than asked for") }
        total &+= UInt64(n)  // cannot wrap: 2^64 bytes are never read
    }
}
