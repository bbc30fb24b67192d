import Glibc
import SwiftletSys

/// Where a drive's bytes live: the one seam between virtio-blk request
/// handling (`BlockRequest.swift`, shared by every kind of drive) and files.
///
/// Offsets and lengths reaching a store are already checked against the disk
/// (whole sectors, inside the image): a store only moves bytes.
enum BlockStore: ~Copyable, Sendable {
    /// The image itself, opened (and flocked) for the drive's whole life:
    /// transfers go straight between it and guest memory with `preadv`/`pwritev`.
    case raw(OwnedFD)
    /// A base image that is never written, under a per-run overlay that
    /// takes the guest's writes (an ephemeral drive).
    case copyOnWrite(CopyOnWriteStore)

    /// Reads (or writes) the whole of `iovs` (host views of guest memory, no
    /// empty entries) at `offset`. May consume `iovs`. Returns the errno on failure.
    func transfer(_ iovs: UnsafeMutableBufferPointer<iovec>, offset: Int64, write: Bool) -> Int32? {
        switch self {
        case .raw(let file):
            // SAFETY: the caller's iovecs point at checked views of guest memory, valid for this call.
            return unsafe FileIO.transfer(file.raw, iovs, offset: offset, write: write)
        case .copyOnWrite(let store):
            return unsafe write ? store.write(iovs, offset: offset) : store.read(iovs, offset: offset)
        }
    }

    /// Makes completed writes durable (FLUSH). Returns the errno on failure.
    func flush() -> Int32? {
        switch self {
        case .raw(let file):
            return retryingEINTR({ fdatasync(file.raw) }) == 0 ? nil : errno
        case .copyOnWrite:
            // Nothing to make durable: the overlay is an unlinked file that
            // vanishes with the VM, so no crash can ever read it back, and the
            // base is never written. Syncing it would only cost disk I/O.
            return nil
        }
    }

    /// DISCARD of `length` bytes at `offset`: a hint, so a file system that
    /// cannot punch holes keeps the data. Returns the errno on failure.
    func discard(offset: Int64, length: Int64) -> Int32? {
        switch self {
        case .raw(let file):
            switch FileIO.fallocate(file.raw, mode: FileIO.punchHole | FileIO.keepSize, offset: offset, length: length) {
            case nil, EOPNOTSUPP?: return nil
            case let e?: return e
            }
        case .copyOnWrite(let store):
            // Zeroing is as cheap as forgetting here (a hole in the overlay),
            // and reads then see zeros, as after a raw drive's punched hole.
            return store.zero(offset: offset, length: length)
        }
    }

    /// WRITE_ZEROES of `length` bytes at `offset`; `unmap`: the driver allows
    /// deallocating the range. Returns the errno on failure.
    func writeZeroes(offset: Int64, length: Int64, unmap: Bool) -> Int32? {
        switch self {
        case .raw(let file):
            return FileIO.zero(file.raw, offset: offset, length: length, unmap: unmap)
        case .copyOnWrite(let store):
            return store.zero(offset: offset, length: length)
        }
    }
}

extension FileIO {
    /// Zeroes `length` bytes at `offset`: punches a hole (when `unmap`) or
    /// zeroes the range, falling back to the other and then to writing zeros.
    /// Returns the errno on failure.
    static func zero(_ fd: Int32, offset: Int64, length: Int64, unmap: Bool) -> Int32? {
        let punch = punchHole | keepSize
        let zeroes = zeroRange | keepSize
        var failure = fallocate(fd, mode: unmap ? punch : zeroes, offset: offset, length: length)
        if failure != nil { failure = fallocate(fd, mode: unmap ? zeroes : punch, offset: offset, length: length) }
        if failure != nil { failure = writeZeros(fd, offset: offset, length: length) }
        return failure
    }

    /// Calls `body` with iovecs for the `count` bytes at byte `start` of the
    /// data that `iovs` describe (which stay untouched), in a temporary
    /// allocation; `body` may consume them. `start + count` must lie inside.
    static func withSubrange<R>(_ iovs: UnsafeMutableBufferPointer<iovec>, start: Int, count: Int,
                                _ body: (UnsafeMutableBufferPointer<iovec>) -> R) -> R {
        // SAFETY: the sub-range never has more entries than `iovs`, and lives only inside this call.
        unsafe withUnsafeTemporaryAllocation(of: iovec.self, capacity: iovs.count) { sub in
            var skip = start, left = count, used = 0
            for unsafe v in unsafe iovs where left > 0 {
                if unsafe skip >= v.iov_len {
                    unsafe skip -= v.iov_len
                    continue
                }
                let n = unsafe min(v.iov_len - skip, left)
                unsafe sub[used] = unsafe iovec(iov_base: v.iov_base! + skip, iov_len: n)
                used += 1
                left -= n
                skip = 0
            }
            precondition(left == 0, "subrange past the end of the data")
            // SAFETY: `used` entries were filled above, each a part of one of the caller's iovecs.
            return unsafe body(UnsafeMutableBufferPointer(rebasing: sub[0..<used]))
        }
    }
}
