import Glibc
import SwiftletMemory
import SwiftletSys

extension BlockDevice {
    /// Serves one request chain and returns the bytes written into it (data
    /// plus the status byte), for `Virtqueue.pushUsed`.
    ///
    /// Layout (section 5.2.6), framing-agnostic: a 16-byte header (le32 type,
    /// le32 reserved, le64 sector) at the start of the readable part, then
    /// OUT data or discard segments; IN data at the start of the writable part;
    /// the status byte is its last byte.
    ///
    /// Never throws: a chain with no writable byte gets nothing written and
    /// length 0; any other malformed request gets IOERR, an unknown type UNSUPP.
    public func handle(_ chain: DescriptorChain, memory: GuestMemory) -> UInt32 {
        guard chain.writableLength >= 1 else { return 0 }
        let statusOffset = chain.writableLength - 1
        let (status, written) = execute(chain, memory: memory, dataLength: statusOffset)
        let stored: Bool
        // SAFETY: a checked one-byte view of guest memory (the status byte), written once here.
        if let last = unsafe chain.lastWritableByte(in: memory) {
            // SAFETY: `last` is a bounds-checked one-byte slice of guest memory.
            // Why: skips the general scatter walk and its copy for the common layout.
            unsafe last.storeBytes(of: status, as: UInt8.self)
            stored = true
        } else {
            var byte = status
            stored = unsafe withUnsafeBytes(of: &byte) { raw in
                unsafe (try? chain.write(to: memory, offset: statusOffset, from: raw)) != nil
            }
        }
        // `written` excludes the status byte. A popped chain is under 4 GiB; one
        // built by hand might not be, so clamp rather than trap.
        return stored ? UInt32(clamping: written + 1) : 0
    }

    /// Runs the request; returns its status and the data bytes written into the chain.
    /// `dataLength` is the writable part less the status byte.
    private func execute(_ chain: DescriptorChain, memory: GuestMemory, dataLength: Int) -> (UInt8, Int) {
        let ioError = (VirtioBlock.statusIOError, 0)
        guard let header = try? Header(chain, memory: memory) else { return ioError }
        switch header.type {
        case VirtioBlock.requestIn:
            guard let offset = byteOffset(sector: header.sector, length: dataLength),
                  transfer(chain, memory: memory, writable: true, at: 0, count: dataLength, fileOffset: offset)
            else { return ioError }
            return (VirtioBlock.statusOK, dataLength)

        case VirtioBlock.requestOut:
            let length = chain.readableLength - VirtioBlock.headerSize
            guard !readOnly,
                  let offset = byteOffset(sector: header.sector, length: length),
                  transfer(chain, memory: memory, writable: false, at: VirtioBlock.headerSize, count: length, fileOffset: offset)
            else { return ioError }
            return (VirtioBlock.statusOK, 0)

        case VirtioBlock.requestFlush:
            guard store.flush() == nil else { return ioError }
            return (VirtioBlock.statusOK, 0)

        case VirtioBlock.requestGetID:
            return getID(chain, memory: memory, dataLength: dataLength)

        case VirtioBlock.requestDiscard, VirtioBlock.requestWriteZeroes:
            guard !readOnly else { return ioError }
            return (discardOrZero(chain, memory: memory, zero: header.type == VirtioBlock.requestWriteZeroes), 0)

        default:
            return (VirtioBlock.statusUnsupported, 0)
        }
    }

    /// GET_ID: the serial, cut to the data part. Out of line, like
    /// `discardOrZero`: rare requests stay out of the hot IN/OUT path.
    @inline(never)
    private func getID(_ chain: DescriptorChain, memory: GuestMemory, dataLength: Int) -> (UInt8, Int) {
        let count = min(VirtioBlock.idLength, dataLength)
        // SAFETY: `count` is at most the id's length; the chain write checks the guest's side.
        let done: Bool = unsafe id.withUnsafeBytes { raw in
            unsafe (try? chain.write(to: memory, offset: 0, from: UnsafeRawBufferPointer(rebasing: raw[0..<count]))) != nil
        }
        return done ? (VirtioBlock.statusOK, count) : (VirtioBlock.statusIOError, 0)
    }

    /// Moves `count` bytes at `at` in the chain's writable (IN: disk to guest)
    /// or readable (OUT: guest to disk) part, straight between the store's
    /// files and checked host views of guest memory. False on any failure.
    private func transfer(_ chain: DescriptorChain, memory: GuestMemory, writable: Bool, at: Int, count: Int, fileOffset: Int64) -> Bool {
        // One iovec per guest buffer at most; on the stack for typical chains.
        let capacity = writable ? chain.writableCount : chain.readableCount
        // SAFETY: the iovecs live only inside this call; each points at a view that `forEachSegment` checked against
        // guest memory.
        return unsafe withUnsafeTemporaryAllocation(of: iovec.self, capacity: capacity) { iovs in
            var used = 0
            do {
                unsafe try chain.forEachSegment(in: memory, deviceWritable: writable, offset: at, count: count) { view in
                    // SAFETY: forEachSegment yields at most one view per buffer of the
                    // part, so `used < capacity`; checked anyway, as the subscript is not.
                    precondition(used < iovs.count)
                    unsafe iovs[used] = unsafe iovec(iov_base: view.baseAddress, iov_len: view.count)
                    used += 1
                }
            } catch {
                return false
            }
            // IN reads the disk into guest memory: the device writes the guest's writable part.
            return unsafe store.transfer(UnsafeMutableBufferPointer(rebasing: iovs[0..<used]), offset: fileOffset, write: !writable) == nil
        }
    }

    /// The request header, copied out of guest memory once.
    private struct Header {
        var type: UInt32
        var sector: UInt64

        /// `borrowing`: an initializer takes its arguments owned by default,
        /// which cost a retain and release of `memory` (and a chain copy) per request.
        init(_ chain: borrowing DescriptorChain, memory: borrowing GuestMemory) throws(VirtqueueError) {
            var raw = (UInt64(0), UInt64(0))
            // SAFETY: a view of exactly the header's size, checked against guest memory, read at once.
            if let view = unsafe chain.leadingReadableView(in: memory, count: VirtioBlock.headerSize) {
                // SAFETY: `view` is a bounds-checked 16-byte slice of guest memory.
                // Why: the header nearly always sits in the first buffer; two loads
                // beat the general scatter walk and a `memcpy` call.
                raw = unsafe (view.loadUnaligned(as: UInt64.self), view.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            } else {
                unsafe try withUnsafeMutableBytes(of: &raw) { bytes throws(VirtqueueError) in
                    unsafe try chain.read(from: memory, offset: 0, into: bytes)
                }
            }
            type = UInt32(truncatingIfNeeded: UInt64(littleEndian: raw.0)) // low half; the high half is `reserved`
            sector = UInt64(littleEndian: raw.1)
        }
    }

    /// The file offset of `length` bytes at `sector`, or nil unless the length
    /// is whole sectors and the range lies inside the disk. Overflow-safe.
    private func byteOffset(sector: UInt64, length: Int) -> Int64? {
        let sectorSize = VirtioBlock.sectorSize
        guard length >= 0, length % sectorSize == 0 else { return nil }
        return byteOffset(sector: sector, count: UInt64(length / sectorSize))
    }

    /// The file offset of `count` sectors at `sector`, or nil past the end of the disk.
    private func byteOffset(sector: UInt64, count: UInt64) -> Int64? {
        // sector <= sectors first, so the subtraction cannot wrap; sectors * 512
        // is the file size, so the product fits.
        guard sector <= sectors, count <= sectors - sector else { return nil }
        return Int64(sector * UInt64(VirtioBlock.sectorSize))
    }

    /// DISCARD or WRITE_ZEROES: validates every segment, then applies them.
    @inline(never)
    private func discardOrZero(_ chain: DescriptorChain, memory: GuestMemory, zero: Bool) -> UInt8 {
        let length = chain.readableLength - VirtioBlock.headerSize
        let size = VirtioBlock.segmentSize
        guard length > 0, length % size == 0, length / size <= Int(VirtioBlock.maxDiscardSegments) else {
            return VirtioBlock.statusIOError
        }
        var ranges: [(offset: Int64, length: Int64, unmap: Bool)] = []
        for i in 0..<(length / size) {
            var raw = (UInt64(0), UInt64(0))
            // SAFETY: reads exactly the 16 bytes of the local tuple; the chain read checks the guest's side.
            let read: Bool = unsafe withUnsafeMutableBytes(of: &raw) { bytes in
                unsafe (try? chain.read(from: memory, offset: VirtioBlock.headerSize + i * size, into: bytes)) != nil
            }
            guard read else { return VirtioBlock.statusIOError }
            let sector = UInt64(littleEndian: raw.0)
            let second = UInt64(littleEndian: raw.1)
            let count = UInt32(truncatingIfNeeded: second)
            let flags = UInt32(truncatingIfNeeded: second >> 32)
            // Section 5.2.6.2: unknown flags, and UNMAP on a discard, are unsupported.
            guard flags & ~VirtioBlock.segmentFlagUnmap == 0 else { return VirtioBlock.statusUnsupported }
            let unmap = flags & VirtioBlock.segmentFlagUnmap != 0
            if unmap && !zero { return VirtioBlock.statusUnsupported }
            guard count <= VirtioBlock.maxDiscardSectors,
                  let offset = byteOffset(sector: sector, count: UInt64(count))
            else { return VirtioBlock.statusIOError }
            ranges.append((offset, Int64(count) * Int64(VirtioBlock.sectorSize), unmap))
        }
        for r in ranges where r.length > 0 {
            let failure = zero ? store.writeZeroes(offset: r.offset, length: r.length, unmap: r.unmap)
                               : store.discard(offset: r.offset, length: r.length)
            if failure != nil { return VirtioBlock.statusIOError }
        }
        return VirtioBlock.statusOK
    }
}
