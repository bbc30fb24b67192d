import SwiftletMemory

/// One guest buffer of a descriptor chain: a guest-physical address and a length.
///
/// A buffer that `Virtqueue.pop()` returns with a non-zero length lies inside
/// guest memory; a zero-length buffer's address is never dereferenced.
public struct GuestBuffer: Sendable, Equatable {
    /// Guest-physical address of the first byte.
    public let address: UInt64
    /// Length in bytes.
    public let length: UInt32

    public init(address: UInt64, length: UInt32) {
        self.address = address
        self.length = length
    }
}

/// A descriptor chain taken from the available ring: the device-readable
/// buffers, then the device-writable ones, flattened across any indirect table.
///
/// The readable and writable parts each behave as one contiguous byte range,
/// so a device never assumes how the driver framed its request (VERSION_1
/// implies ANY_LAYOUT).
public struct DescriptorChain: Sendable {
    /// The head descriptor index, to hand back with `Virtqueue.pushUsed`.
    public let head: UInt16
    /// Device-readable (driver to device) buffers, in chain order.
    public let readable: [GuestBuffer]
    /// Device-writable (device to driver) buffers, in chain order.
    public let writable: [GuestBuffer]
    /// Total bytes of the readable buffers.
    public let readableLength: Int
    /// Total bytes of the writable buffers.
    public let writableLength: Int

    /// A chain of the given buffers. `Virtqueue.pop()` builds these after
    /// validating them; a chain built here is still bounds-checked on every access.
    public init(head: UInt16, readable: [GuestBuffer], writable: [GuestBuffer]) {
        self.head = head
        self.readable = readable
        self.writable = writable
        // Each length is below 2^32 and a chain holds at most 2^16 + 2^16 buffers,
        // so these sums cannot overflow a 64-bit Int.
        self.readableLength = readable.reduce(0) { $0 + Int($1.length) }
        self.writableLength = writable.reduce(0) { $0 + Int($1.length) }
    }

    /// Copies `into.count` readable bytes starting at `offset` (counted across
    /// buffers) into `into`. Throws if the range runs past the readable part.
    public func read(from memory: GuestMemory, offset: Int, into: UnsafeMutableRawBufferPointer) throws(VirtqueueError) {
        var done = 0
        try forEachSegment(in: memory, deviceWritable: false, offset: offset, count: into.count) { segment in
            // SAFETY: `segment` is a bounds-checked slice of guest memory, and the
            // segments sum to exactly `into.count`, so `done + segment.count <= into.count`.
            (into.baseAddress! + done).copyMemory(from: segment.baseAddress!, byteCount: segment.count)
            done += segment.count
        }
    }

    /// Copies `from` into the writable part starting at `offset` (counted across
    /// buffers). Throws if the range runs past the writable part.
    public func write(to memory: GuestMemory, offset: Int, from: UnsafeRawBufferPointer) throws(VirtqueueError) {
        var done = 0
        try forEachSegment(in: memory, deviceWritable: true, offset: offset, count: from.count) { segment in
            // SAFETY: as in `read`, with the roles of the two buffers swapped.
            segment.baseAddress!.copyMemory(from: from.baseAddress! + done, byteCount: segment.count)
            done += segment.count
        }
    }

    /// Host views of `count` bytes at `offset` in the readable (or writable)
    /// part, one per guest buffer touched, skipping empty buffers: the
    /// scatter-gather list for vectored I/O straight into guest memory.
    ///
    /// Each view is bounds-checked against guest memory and stays valid while `memory` lives.
    public func hostBuffers(in memory: GuestMemory, writable: Bool, offset: Int, count: Int) throws(VirtqueueError) -> [UnsafeMutableRawBufferPointer] {
        var views: [UnsafeMutableRawBufferPointer] = []
        views.reserveCapacity(writable ? self.writable.count : readable.count)
        try forEachSegment(in: memory, deviceWritable: writable, offset: offset, count: count) { views.append($0) }
        return views
    }

    /// Calls `body` with the checked host view of each non-empty piece of the
    /// byte range `[offset, offset+count)` of one part, in order.
    func forEachSegment(
        in memory: GuestMemory, deviceWritable: Bool, offset: Int, count: Int,
        _ body: (UnsafeMutableRawBufferPointer) -> Void
    ) throws(VirtqueueError) {
        let buffers = deviceWritable ? writable : readable
        let total = deviceWritable ? writableLength : readableLength
        // Ordered so that no subtraction can go negative and no sum can overflow.
        guard offset >= 0, count >= 0, offset <= total, count <= total - offset else {
            throw .outOfRange(offset: offset, count: count, length: total)
        }
        var skip = offset
        var left = count
        for buffer in buffers {
            if left == 0 { break }
            let length = Int(buffer.length)
            if skip >= length {
                skip -= length // also passes over empty buffers without touching their address
                continue
            }
            let take = min(length - skip, left)
            // A chain from `init` may carry any address: add with an overflow check.
            let (address, overflow) = buffer.address.addingReportingOverflow(UInt64(skip))
            guard !overflow else { throw .memory(.outOfBounds(address: buffer.address, length: length)) }
            let view: UnsafeMutableRawBufferPointer
            do { view = try memory.slice(at: address, count: take) } catch { throw .memory(error) }
            body(view)
            skip = 0
            left -= take
        }
    }
}
