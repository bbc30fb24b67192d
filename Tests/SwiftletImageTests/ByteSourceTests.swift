import Glibc
import SwiftletSys
import Testing
@testable import SwiftletImage

/// Test helpers shared by the io tests.
enum IO {
    /// Deterministic, mildly compressible bytes.
    static func data(count: Int, seed: UInt64 = 1) -> [UInt8] {
        var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var out = [UInt8](repeating: 0, count: count)
        for i in 0..<count {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            // Half the bytes from a small alphabet, so compressors have something to find.
            out[i] = i % 3 == 0 ? UInt8(truncatingIfNeeded: x) : UInt8(ascii: "a") + UInt8(truncatingIfNeeded: x % 4)
        }
        return out
    }

    /// Reads `source` to its end in pieces of the given sizes (cycled).
    static func drain<S: ByteSource>(_ source: inout S, chunks: [Int] = [65536], limit: Int = 1 << 30) throws(StreamError) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: chunks.max() ?? 1)
        var k = 0
        while true {
            let want = chunks[k % chunks.count]
            k += 1
            let n = try buffer.withUnsafeMutableBytes { b in
                Result { () throws(StreamError) in try source.read(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<want])) }
            }.get()
            if n == 0 { return out }
            #expect(n <= want)
            out += buffer[0..<n]
            if out.count > limit { return out }
        }
    }

    /// A fresh temporary directory.
    static func temporaryDirectory() -> String {
        var template = Array("/tmp/swiftlet-image-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp")
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(fd >= 0, "create \(path)")
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        precondition(n == bytes.count, "write \(path)")
        close(fd)
    }
}

/// A source that hands out at most `step` bytes per read: every boundary case of the readers above it.
struct DribbleSource: ByteSource {
    var inner: BufferSource
    let step: Int

    init(_ bytes: [UInt8], step: Int) {
        inner = BufferSource(bytes)
        self.step = step
    }

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(step, buffer.count)]))
    }
}

/// A source that fails with EIO after `after` bytes.
struct FailingSource: ByteSource {
    var inner: BufferSource
    var left: Int

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        if left == 0 { throw .io(call: "read", errno: EIO) }
        let n = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(left, buffer.count)]))
        left -= n
        return n
    }
}

@Suite struct ByteSourceTests {
    @Test func bufferSourceReadsInOrderThenZero() throws {
        let data = IO.data(count: 1000)
        var s = BufferSource(data)
        #expect(try IO.drain(&s, chunks: [1, 7, 300, 4096]) == data)
        var one = [UInt8](repeating: 0, count: 4)
        #expect(try one.withUnsafeMutableBytes { try s.read(into: $0) } == 0)
        var empty = BufferSource([])
        #expect(try IO.drain(&empty) == [])
    }

    @Test func fileSourceReadsAFileAndReportsErrors() throws {
        let dir = IO.temporaryDirectory()
        defer { removeTree(dir) }
        let data = IO.data(count: 300_000, seed: 2)
        IO.writeFile(dir + "/f", data)
        let fd = open(dir + "/f", O_RDONLY | O_CLOEXEC)
        #expect(fd >= 0)
        defer { close(fd) }
        var s = FileSource(fd: fd)
        #expect(try IO.drain(&s, chunks: [100_000, 3, 65536]) == data)

        // A descriptor open for writing only: read(2) fails with EBADF.
        let wfd = open(dir + "/f", O_WRONLY | O_CLOEXEC)
        defer { close(wfd) }
        var bad = FileSource(fd: wfd)
        #expect(throws: StreamError.io(call: "read", errno: EBADF)) { try IO.drain(&bad) }
    }

    @Test func limitedSourceStopsAtItsLimit() throws {
        let data = IO.data(count: 1000)
        var s = LimitedSource(BufferSource(data), limit: 600)
        #expect(try IO.drain(&s, chunks: [7, 256]) == Array(data[0..<600]))
        #expect(s.remaining == 0)
        // The inner source is left right after the limit.
        var rest = s.takeInner()
        #expect(try IO.drain(&rest) == Array(data[600...]))

        var zero = LimitedSource(BufferSource(data), limit: 0)
        #expect(try IO.drain(&zero) == [])
    }

    @Test func limitedSourceOverAShortInnerIsTruncated() throws {
        var s = LimitedSource(BufferSource(IO.data(count: 100)), limit: 101)
        #expect(throws: StreamError.truncated) { try IO.drain(&s) }
        var exact = LimitedSource(BufferSource(IO.data(count: 100)), limit: 100)
        #expect(try IO.drain(&exact).count == 100)
    }

    @Test func readAllKeepsToItsLimit() throws {
        let data = IO.data(count: 200_000)
        var a = BufferSource(data)
        #expect(try readAll(&a, maxBytes: 200_000) == data)
        var b = BufferSource(data)
        #expect(throws: StreamError.tooLarge("more than 199999 bytes")) { try readAll(&b, maxBytes: 199_999) }
        var c = BufferSource([])
        #expect(try readAll(&c, maxBytes: 0) == [])
        var d = BufferSource([1])
        #expect(throws: StreamError.self) { try readAll(&d, maxBytes: 0) }
        var e = DribbleSource(data, step: 1000)
        #expect(try readAll(&e, maxBytes: Int.max) == data)
        var f = FailingSource(inner: BufferSource(data), left: 10)
        #expect(throws: StreamError.io(call: "read", errno: EIO)) { try readAll(&f, maxBytes: 1 << 20) }
    }

    @Test func discardAllCounts() throws {
        var s = DribbleSource(IO.data(count: 12345), step: 1000)
        #expect(try discardAll(&s) == 12345)
    }

    @Test func errorsDescribeThemselves() {
        #expect(StreamError.truncated.description.contains("truncated"))
        #expect(StreamError.io(call: "read", errno: EIO).description.hasPrefix("read: "))
        #expect(StreamError.corrupt("x").description.contains("x"))
    }
}
