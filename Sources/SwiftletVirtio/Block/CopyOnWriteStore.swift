import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// An ephemeral drive's bytes: a base image that is never written, under a
/// per-run overlay that takes the guest's writes and vanishes with the VM.
///
/// The overlay is a file with no name from the start: `O_TMPFILE` in
/// `$TMPDIR` (or /tmp), else a memfd. It disappears with its last descriptor,
/// on every way out of the process, SIGKILL included, and nothing is left to
/// clean up. It is as large as the base and sparse: only written blocks take
/// space. A bitmap in memory records which 4 KiB blocks the overlay holds
/// ("copied"); a set bit means the overlay's block is the disk's content.
///
/// - Reads: each run of blocks in one state comes straight from the overlay
///   or the base into guest memory (`preadv`, no bounce buffer).
/// - Writes: straight from guest memory to the overlay, except the first and
///   last block when the write covers them only partly and they are not
///   copied yet: those are read-modify-written (base block, guest bytes
///   merged in, to the overlay) first. Bits are set only once the whole write
///   succeeded, so a failed write never exposes a half-copied block.
///
/// Concurrency: the VMM serves a drive on the device event loop thread (one
/// queue), so calls come one at a time and the mutex is never contended. It
/// still makes calls from several threads safe: each request runs whole
/// under it (a read-modify-write must not interleave with another write).
///
/// `@unchecked Sendable`: the overlay's map and descriptors are used under
/// its mutex only.
///
/// `@safe`: its scratch block is private, allocated and freed with the store,
/// and used only one block at a time under the mutex.
@safe final class CopyOnWriteStore: @unchecked Sendable {
    // @unchecked: the descriptors never change after init, and the bitmap and
    // scratch block are only touched under `state`'s mutex.

    /// Bytes per tracked block: a page, and ext4's block size.
    static let blockSize = 4096

    /// The base image: `O_RDONLY`, locked shared by `BlockDevice`.
    let base: OwnedFD
    /// The overlay, as large as the base.
    let overlay: OwnedFD
    /// The disk's size in bytes (a multiple of 512, not necessarily of 4096:
    /// the last block may be partial).
    let size: Int64
    /// The bitmap; each request runs whole under this mutex.
    private let state: Mutex<CopiedBlocks>
    /// One block, for read-modify-write; used only under `state`'s mutex.
    private let scratch: UnsafeMutableRawBufferPointer

    /// Which blocks the overlay holds.
    struct CopiedBlocks {
        /// One bit per block, set once the overlay holds it.
        var copied: [UInt64]

        func isCopied(_ block: Int) -> Bool { copied[block >> 6] & (1 << UInt64(block & 63)) != 0 }

        mutating func markCopied(_ blocks: ClosedRange<Int>) {
            for b in blocks { copied[b >> 6] |= 1 << UInt64(b & 63) }
        }
    }

    /// Takes over `base` (already checked and locked) and creates the
    /// overlay in `directory` (default `$TMPDIR`, else /tmp), or as a memfd
    /// where `O_TMPFILE` cannot be used there. `path` is for messages.
    init(base: consuming OwnedFD, size: Int64, directory: String?, path: String) throws(BlockError) {
        let overlay = try Self.makeOverlay(size: size, directory: directory, path: path)
        let blocks = Int((size + Int64(Self.blockSize) - 1) / Int64(Self.blockSize))
        self.base = base
        self.overlay = overlay
        self.size = size
        self.state = Mutex(CopiedBlocks(copied: [UInt64](repeating: 0, count: (blocks + 63) / 64)))
        // SAFETY: freed once, in deinit; used only under the mutex.
        unsafe self.scratch = .allocate(byteCount: Self.blockSize, alignment: Self.blockSize)
    }

    // SAFETY: the scratch block allocated in init, freed once.
    deinit { unsafe scratch.deallocate() }

    /// `O_TMPFILE` (`__O_TMPFILE | O_DIRECTORY` in every Linux ABI), which
    /// Glibc's module hides behind `_GNU_SOURCE`.
    static let openTmpfile: Int32 = 0o20_000_000 | O_DIRECTORY
    /// `MFD_CLOEXEC`.
    static let memfdCloexec: UInt32 = 1

    /// An unlinked, empty-but-sized (sparse) file for the overlay.
    private static func makeOverlay(size: Int64, directory: String?, path: String) throws(BlockError) -> OwnedFD {
        // SAFETY: getenv's string is copied at once.
        let environment = unsafe getenv("TMPDIR").map { unsafe String(cString: $0) }
        let dir = directory ?? environment.flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var fd = retryingEINTR { unsafe open(dir, openTmpfile | O_RDWR | O_CLOEXEC, mode_t(0o600)) }
        if fd < 0 {
            // EOPNOTSUPP (the file system), EISDIR (a kernel before 3.11), or
            // no usable directory: memory works anywhere, and still has no name.
            let why = SystemError.last("open(\(dir), O_TMPFILE)")
            fd = unsafe swl_memfd_create("swiftlet-ephemeral", memfdCloexec)
            if fd < 0 { throw .overlay(path, SystemError("memfd_create, after \(why),", errno: errno)) }
        }
        let file = OwnedFD(taking: fd)
        do {
            _ = try retryingEINTR("ftruncate(overlay)") { ftruncate(fd, off_t(size)) }
        } catch {
            throw .overlay(path, error)
        }
        return file
    }

    private func blockStart(_ block: Int) -> Int64 { Int64(block) * Int64(Self.blockSize) }
    private func blockEnd(_ block: Int) -> Int64 { min(blockStart(block + 1), size) }

    /// Whether `from..<to` covers all of `block`.
    private func covers(_ block: Int, from: Int64, to: Int64) -> Bool {
        from <= blockStart(block) && to >= blockEnd(block)
    }

    /// Reads the whole of `iovs` at `offset`. Returns the errno on failure.
    func read(_ iovs: UnsafeMutableBufferPointer<iovec>, offset: Int64) -> Int32? {
        // SAFETY: the caller's iovecs point at checked views of guest memory, valid for this call; only their lengths
        // are read here.
        let length = unsafe Int64(iovs.reduce(0) { unsafe $0 + $1.iov_len })
        guard length > 0 else { return nil }
        let end = offset + length
        let first = Int(offset / Int64(Self.blockSize)), last = Int((end - 1) / Int64(Self.blockSize))
        return state.withLock { s -> Int32? in
            var block = first
            while block <= last {
                // The run of blocks in the same state as `block`.
                let copied = s.isCopied(block)
                var next = block + 1
                while next <= last && s.isCopied(next) == copied { next += 1 }
                let fd = copied ? overlay.raw : base.raw
                if block == first && next > last {
                    // One run, the usual case: the whole request in one call.
                    // SAFETY: the caller's iovecs, valid for this call.
                    return unsafe FileIO.transfer(fd, iovs, offset: offset, write: false)
                }
                let from = max(offset, blockStart(block)), to = min(end, blockStart(next))
                // SAFETY: a sub-range of the caller's iovecs: `from..<to` lies inside the request.
                let failure = unsafe FileIO.withSubrange(iovs, start: Int(from - offset), count: Int(to - from)) {
                    unsafe FileIO.transfer(fd, $0, offset: from, write: false)
                }
                if let failure { return failure }
                block = next
            }
            return nil
        }
    }

    /// Writes the whole of `iovs` at `offset` into the overlay. Returns the errno on failure.
    func write(_ iovs: UnsafeMutableBufferPointer<iovec>, offset: Int64) -> Int32? {
        // SAFETY: the caller's iovecs point at checked views of guest memory, valid for this call.
        let length = unsafe Int64(iovs.reduce(0) { unsafe $0 + $1.iov_len })
        guard length > 0 else { return nil }
        return unsafe update(offset: offset, length: length) { buffer, from in
            // The guest's bytes for this part of the block, gathered from its buffers.
            unsafe FileIO.withSubrange(iovs, start: Int(from - offset), count: buffer.count) { pieces in
                var at = buffer.baseAddress!
                for unsafe v in unsafe pieces {
                    unsafe at.copyMemory(from: v.iov_base!, byteCount: v.iov_len)
                    unsafe at += v.iov_len
                }
            }
        } direct: { from, to in
            if from == offset && to == offset + length {
                // SAFETY: the caller's iovecs, valid for this call.
            return unsafe FileIO.transfer(overlay.raw, iovs, offset: offset, write: true)
            }
            // SAFETY: a sub-range of the caller's iovecs: `from..<to` lies inside the request.
            return unsafe FileIO.withSubrange(iovs, start: Int(from - offset), count: Int(to - from)) {
                unsafe FileIO.transfer(overlay.raw, $0, offset: from, write: true)
            }
        }
    }

    /// Zeroes `length` bytes at `offset` (DISCARD and WRITE_ZEROES): holes in
    /// the overlay, which cost nothing. Returns the errno on failure.
    func zero(offset: Int64, length: Int64) -> Int32? {
        guard length > 0 else { return nil }
        // SAFETY: `buffer` is a part of the scratch block that `readModifyWrite` hands over, filled exactly.
        return unsafe update(offset: offset, length: length) { buffer, _ in
            unsafe buffer.initializeMemory(as: UInt8.self, repeating: 0)
        } direct: { from, to in
            FileIO.zero(overlay.raw, offset: from, length: to - from, unmap: true)
        }
    }

    /// The shape of every change: read-modify-write of the partly covered,
    /// not yet copied first and last blocks, with `merge(buffer, from)`
    /// filling the changed part (`buffer`, at disk offset `from`) of the base
    /// block; `direct(from, to)` for the rest, straight into the overlay;
    /// then every block touched is marked copied.
    private func update(offset: Int64, length: Int64,
                        merge: (UnsafeMutableRawBufferPointer, Int64) -> Void,
                        direct: (Int64, Int64) -> Int32?) -> Int32? {
        let end = offset + length
        let first = Int(offset / Int64(Self.blockSize)), last = Int((end - 1) / Int64(Self.blockSize))
        return state.withLock { s -> Int32? in
            var directFrom = offset, directTo = end
            if !s.isCopied(first) && !covers(first, from: offset, to: end) {
                let to = min(end, blockEnd(first))
                // SAFETY: the range lies inside block `first`, which the scratch block holds whole.
                if let failure = unsafe readModifyWrite(first, from: offset, to: to, merge: merge) { return failure }
                directFrom = to
            }
            if last != first && !s.isCopied(last) && !covers(last, from: offset, to: end) {
                let from = blockStart(last)
                if let failure = unsafe readModifyWrite(last, from: from, to: end, merge: merge) { return failure }
                directTo = from
            }
            if directTo > directFrom, let failure = direct(directFrom, directTo) { return failure }
            s.markCopied(first...last)
            return nil
        }
    }

    /// Under the mutex: copies `block` from the base into `scratch`, lets `merge` change the
    /// part `from..<to` (disk offsets), and writes the block to the overlay.
    private func readModifyWrite(_ block: Int, from: Int64, to: Int64,
                                 merge: (UnsafeMutableRawBufferPointer, Int64) -> Void) -> Int32? {
        let start = blockStart(block)
        // SAFETY: a block is at most `blockSize`, the scratch block's size; `from..<to` lies inside it.
        let whole = unsafe UnsafeMutableRawBufferPointer(rebasing: scratch[0..<Int(blockEnd(block) - start)])
        if let failure = unsafe FileIO.transfer(base.raw, [whole], offset: start, write: false) { return failure }
        unsafe merge(UnsafeMutableRawBufferPointer(rebasing: whole[Int(from - start)..<Int(to - start)]), from)
        return unsafe FileIO.transfer(overlay.raw, [whole], offset: start, write: true)
    }
}
