import Glibc
import SwiftletSys

extension SHA256 {
    /// Hashes everything `fd` holds from offset 0 (read with pread, 1 MiB at
    /// a time): the digest and the byte count. The kernel cache, snapshot
    /// file identities and image blobs all hash files this way.
    public static func hash(fileDescriptor fd: Int32) throws(SystemError) -> (digest: [UInt8], count: UInt64) {
        var hash = SHA256()
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while true {
            let n = try readFully(fd, into: buffer, offset: offset)
            if n == 0 { break }
            hash.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += Int64(n)
            if n < chunk { break } // readFully stops short only at the end
        }
        return (hash.finalize(), UInt64(offset))
    }
}
