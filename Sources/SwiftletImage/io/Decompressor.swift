// Streaming decompression of layers (gzip, zstd, or none, told apart by their
// magic) and the digest of a blob as it is read.
import CDecompress
import Glibc
import SwiftletX86

/// How a stream is compressed.
public enum Compression: Equatable, Sendable {
    case none, gzip, zstd
}

/// Decompresses `inner` as its first bytes say: gzip (1f 8b), zstd
/// (28 b5 2f fd), or anything else passed through unchanged (the bytes peeked
/// at are not lost). All concatenated gzip members, or zstd frames, are
/// decompressed. Memory is bounded: a fixed input buffer and the library state.
///
/// A corrupt stream is `.corrupt`; input that ends inside a member or frame is
/// `.truncated`; bytes after a gzip member that do not start another member are
/// `.corrupt`; a zstd frame that needs a window over 128 MiB is `.tooLarge`.
/// An error is final: every later read throws it again.
///
/// Copies share one decompressor (and the inner source): read through one.
public struct DecompressingSource<Inner: ByteSource>: ByteSource {
    private let core: DecompressorCore<Inner>

    /// Peeks at the first bytes of `inner` to tell the compression.
    public init(_ inner: consuming Inner) throws(StreamError) {
        core = try DecompressorCore(inner)
    }

    public var compression: Compression { core.compression }

    /// The compressed source, as read so far (read to its end once `read` has returned 0).
    public var inner: Inner { core.inner }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        try core.read(into: buffer)
    }
}

/// The state of a `DecompressingSource`: a class, for the C decompressor's and
/// the input buffer's lifetimes.
final class DecompressorCore<Inner: ByteSource> {
    /// The input buffer's size.
    static var inputSize: Int { 128 << 10 }

    var inner: Inner
    let compression: Compression
    /// The C decompressor (nil for `.none`).
    private let stream: OpaquePointer?
    /// Input read from `inner` and not yet consumed: [start, end) of `input`.
    private let input: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// `inner` has ended.
    private var eof = false
    /// Inside a gzip member or a zstd frame (false at the boundary after one).
    private var inFrame = true
    /// The error that ended the stream: the C state is undefined after it.
    private var failed: StreamError?

    init(_ inner: consuming Inner) throws(StreamError) {
        var source = inner
        // SAFETY: owned by this object: freed in deinit, or here when init fails.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.inputSize, alignment: 16)
        var first = 0, last = 0, ended = false
        do throws(StreamError) {
            try Self.ensure(4, inner: &source, input: buffer, start: &first, end: &last, eof: &ended)
        } catch {
            buffer.deallocate()
            throw error
        }
        // SAFETY: ensure keeps first <= last <= buffer.count.
        let head = UnsafeRawBufferPointer(rebasing: buffer[first..<last])
        let kind: Compression
        if head.count >= 2 && head[0] == 0x1f && head[1] == 0x8b {
            kind = .gzip
        } else if head.count >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd {
            kind = .zstd
        } else {
            kind = .none
        }
        var state: OpaquePointer? = nil
        if kind != .none {
            state = swl_dstream_new(kind == .gzip ? SWL_DS_GZIP : SWL_DS_ZSTD)
            if state == nil {
                buffer.deallocate()
                throw .io(call: "decompressor state", errno: ENOMEM)
            }
        }
        self.inner = source
        self.input = buffer
        self.start = first
        self.end = last
        self.eof = ended
        self.compression = kind
        self.stream = state
    }

    deinit {
        swl_dstream_free(stream)
        input.deallocate()
    }

    /// Makes at least `count` (<= the buffer's size) bytes available in
    /// [start, end), unless the source ends first: moves what is left to the
    /// front and reads more.
    private static func ensure(_ count: Int, inner: inout Inner, input: UnsafeMutableRawBufferPointer,
                               start: inout Int, end: inout Int, eof: inout Bool) throws(StreamError) {
        if end - start >= count || eof { return }
        if start > 0 {
            if end > start, let base = input.baseAddress {
                // SAFETY: [start, end) lies within the buffer; memmove allows the overlap.
                memmove(base, base + start, end - start)
            }
            end -= start
            start = 0
        }
        while end < count && !eof {
            // SAFETY: end < count <= input.count: the free tail of the buffer.
            let n = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: input[end...]))
            guard n <= input.count - end else { throw .corrupt("a source returned more bytes than asked for") }
            if n == 0 { eof = true } else { end += n }
        }
    }

    /// Refills the empty input buffer, or notes the end of the source.
    private func refill() throws(StreamError) {
        start = 0
        end = 0
        try Self.ensure(1, inner: &inner, input: input, start: &start, end: &end, eof: &eof)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        if let failed { throw failed }
        guard buffer.count > 0 else { return 0 }
        do throws(StreamError) {
            return compression == .none ? try passThrough(into: buffer) : try decompress(into: buffer)
        } catch {
            failed = error
            throw error
        }
    }

    private func passThrough(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        if start < end {
            // The peeked bytes first.
            let n = min(end - start, buffer.count)
            if let to = buffer.baseAddress, let from = input.baseAddress {
                // SAFETY: n <= buffer.count, and start + n <= end <= input.count.
                memcpy(to, from + start, n)
            }
            start += n
            return n
        }
        if eof { return 0 }
        let n = try inner.read(into: buffer)
        guard n <= buffer.count else { throw .corrupt("a source returned more bytes than asked for") }
        if n == 0 { eof = true }
        return n
    }

    private func decompress(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        guard let stream, let inBase = input.baseAddress, let outBase = buffer.baseAddress else { return 0 }
        let name = compression == .gzip ? "gzip" : "zstd"
        while true {
            if !inFrame {
                // Between members or frames: the end, or another one.
                if compression == .gzip {
                    try Self.ensure(2, inner: &inner, input: input, start: &start, end: &end, eof: &eof)
                    if start == end { return 0 }
                    guard end - start >= 2, input[start] == 0x1f, input[start + 1] == 0x8b else {
                        throw .corrupt("gzip: trailing bytes after the last member")
                    }
                    guard swl_dstream_reset(stream) == 0 else { throw .corrupt("gzip: cannot reset") }
                } else {
                    if start == end { try refill() }
                    if start == end { return 0 }
                    // zstd starts the next frame (or skips a skippable one) by itself.
                }
                inFrame = true
            }
            if start == end && !eof { try refill() }
            var used = 0
            var made = 0
            // SAFETY: the C side reads at most end - start bytes from inBase + start (within the
            // input buffer) and writes at most buffer.count bytes at outBase, and reports both counts.
            let rc = swl_dstream_step(stream, inBase.assumingMemoryBound(to: UInt8.self) + start, end - start, &used,
                                      outBase.assumingMemoryBound(to: UInt8.self), buffer.count, &made)
            guard used <= end - start, made <= buffer.count else { throw .corrupt("\(name): decompressor overran its buffers") }
            start += used
            switch rc {
            case SWL_DS_END:
                inFrame = false
                if made > 0 { return made }
            case SWL_DS_MORE:
                if made > 0 { return made }
                if used == 0 {
                    // Stuck: it wants more input than there is.
                    if eof { throw .truncated }
                    if start < end { throw .corrupt("\(name): no progress") }
                }
            case SWL_DC_TOO_LARGE:
                throw .tooLarge("\(name): a frame's window over 128 MiB")
            case SWL_DC_NOMEM:
                throw .io(call: "\(name) decompression", errno: ENOMEM)
            default:
                throw .corrupt("\(name): invalid compressed data")
            }
        }
    }
}

/// Feeds every byte read through SHA-256 and counts them: a blob's digest and
/// size are checked against its descriptor once it has been read to its end.
public struct HashingSource<Inner: ByteSource>: ByteSource {
    public private(set) var inner: Inner
    private var hasher = SHA256()
    /// Bytes read so far.
    public private(set) var count: UInt64 = 0

    public init(_ inner: consuming Inner) { self.inner = inner }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        let n = try inner.read(into: buffer)
        guard n >= 0, n <= buffer.count else { throw .corrupt("a source returned more bytes than asked for") }
        if n > 0 {
            // SAFETY: n <= buffer.count (checked above): the bytes just read.
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            count &+= UInt64(n)  // cannot wrap: 2^64 bytes are never read
        }
        return n
    }

    /// The lowercase hexadecimal SHA-256 of everything read so far (reading may go on).
    public mutating func finalizeHex() -> String {
        let copy = hasher
        return SHA256.hex(copy.finalize())
    }
}
