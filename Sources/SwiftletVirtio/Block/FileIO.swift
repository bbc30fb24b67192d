import CSwiftlet
import Glibc
import SwiftletSys

/// File I/O the block device needs beyond what SwiftletSys offers:
/// vectored transfers that survive EINTR and short counts, and `fallocate`.
enum FileIO {
    /// At most this many iovecs per call (the kernel's UIO_MAXIOV).
    static let maxIOVecs = 1024

    /// Reads (or writes) the whole of `buffers` at `offset`, retrying EINTR and
    /// short transfers. Returns the errno on failure, or EIO when the file ends early.
    static func transfer(_ fd: Int32, _ buffers: [UnsafeMutableRawBufferPointer], offset: Int64, write: Bool) -> Int32? {
        // SAFETY: one iovec per buffer at most, living only inside this call.
        unsafe withUnsafeTemporaryAllocation(of: iovec.self, capacity: buffers.count) { iovs in
            var count = 0
            for unsafe b in unsafe buffers where b.count > 0 {
                unsafe iovs[count] = unsafe iovec(iov_base: b.baseAddress, iov_len: b.count)
                count += 1
            }
            return unsafe transfer(fd, UnsafeMutableBufferPointer(rebasing: iovs[0..<count]), offset: offset, write: write)
        }
    }

    /// Reads (or writes) the whole of `iovs` (no empty entries) at `offset` with
    /// preadv (pwritev), or pread (pwrite) for a single buffer, the common case;
    /// retries EINTR and short transfers, consuming `iovs`. Returns the errno on
    /// failure, or EIO when the file ends early.
    static func transfer(_ fd: Int32, _ iovs: UnsafeMutableBufferPointer<iovec>, offset: Int64, write: Bool) -> Int32? {
        var first = 0
        var position = offset
        while first < iovs.count {
            let batch = min(iovs.count - first, maxIOVecs)
            // SAFETY: the iovecs point into checked slices of guest memory (or a
            // caller's buffer) that outlive this call; `first + batch <= iovs.count`.
            let v = unsafe iovs.baseAddress! + first
            let n = retryingEINTR {
                unsafe batch == 1
                    ? (write ? pwrite(fd, v.pointee.iov_base, v.pointee.iov_len, off_t(position))
                             : pread(fd, v.pointee.iov_base, v.pointee.iov_len, off_t(position)))
                    : (write ? pwritev(fd, v, Int32(batch), off_t(position)) : preadv(fd, v, Int32(batch), off_t(position)))
            }
            if n < 0 { return errno }
            // Nothing moved for a non-empty request: the file ended (it shrank under us).
            if n == 0 { return EIO }
            position += Int64(n)
            // Step past what was transferred, trimming a partly done iovec.
            var done = n
            while done > 0 && first < iovs.count {
                // SAFETY: `first < iovs.count` (loop condition); a partly done iovec is advanced by less than its
                // length.
                let length = unsafe iovs[first].iov_len
                if done >= length {
                    done -= length
                    first += 1
                } else {
                    unsafe iovs[first].iov_base = unsafe iovs[first].iov_base! + done
                    unsafe iovs[first].iov_len = length - done
                    done = 0
                }
            }
        }
        return nil
    }

    /// `fallocate` mode bits (linux/falloc.h).
    static let keepSize: Int32 = 0x01
    static let punchHole: Int32 = 0x02
    static let zeroRange: Int32 = 0x10

    /// `fallocate(fd, mode, offset, length)`, retrying EINTR. Returns the errno on failure.
    static func fallocate(_ fd: Int32, mode: Int32, offset: Int64, length: Int64) -> Int32? {
        retryingEINTR({ swl_fallocate(fd, mode, offset, length) }) == 0 ? nil : errno
    }

    /// Writes `length` zero bytes at `offset`: the fallback when the file
    /// system cannot punch holes or zero ranges.
    static func writeZeros(_ fd: Int32, offset: Int64, length: Int64) -> Int32? {
        let chunk = 1 << 16
        // SAFETY: allocated and freed here, initialised before use, each write at most `chunk` bytes.
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { unsafe zeros.deallocate() }
        unsafe zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var done: Int64 = 0
        while done < length {
            let n = Int(min(Int64(chunk), length - done))
            if let e = unsafe transfer(fd, [UnsafeMutableRawBufferPointer(rebasing: zeros[0..<n])], offset: offset + done, write: true) {
                return e
            }
            done += Int64(n)
        }
        return nil
    }
}
