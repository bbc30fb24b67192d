import Glibc

/// A temporary raw image, removed when dropped.
package final class TempImage {
    package let path: String

    /// An image of `bytes` bytes (any size, to test bad ones); filled with `pattern(offset)` when given.
    package init(bytes: Int, directory: String = "/tmp", pattern: ((Int) -> UInt8)? = nil) throws {
        var template = Array("\(directory)/swiftlet-virtio-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw TestFailure("mkstemp") }
        defer { close(fd) }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard ftruncate(fd, off_t(bytes)) == 0 else { throw TestFailure("ftruncate") }
        if let pattern {
            let data = (0..<bytes).map(pattern)
            let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress!, bytes, 0) }
            guard n == bytes else { throw TestFailure("pwrite") }
        }
    }

    package convenience init(sectors: Int, directory: String = "/tmp", pattern: ((Int) -> UInt8)? = nil) throws {
        try self.init(bytes: sectors * 512, directory: directory, pattern: pattern)
    }

    /// The image's bytes at `offset`, read behind the device's back.
    package func contents(at offset: Int, count: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TestFailure("open") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, count, off_t(offset)) }
        guard n == count else { throw TestFailure("pread") }
        return bytes
    }

    deinit { unlink(path) }
}

package struct TestFailure: Error, CustomStringConvertible {
    package let description: String
    package init(_ what: String) { description = what }
}
