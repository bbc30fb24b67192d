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

    @inlinable
    public init(address: UInt64, length: UInt32) {
        self.address = address
        self.length = length
    }
}

/// The buffers of one chain, readable ones first: the first `inlineCapacity`
/// held inline, any further ones in a heap array.
///
/// Why: a chain used to own two `[GuestBuffer]` arrays, and their allocation,
/// reference counting and release were the largest user-mode cost of a small
/// request. Typical chains (header, a few data buffers, status) now live
/// entirely inside the `DescriptorChain` value, with no allocation and no
/// reference counting (`spill` stays nil).
struct ChainBuffers: Sendable {
    /// Buffers held without allocating. A small block request is header, data
    /// and status (4 leaves room for data split across a page boundary); 4
    /// also keeps the chain small enough to pass in registers rather than
    /// through `memcpy` (8 measurably did not).
    static let inlineCapacity = 4

    private var inline: InlineArray<4, GuestBuffer> // `inlineCapacity` elements
    /// The buffers past `inlineCapacity`, in order; nil while none.
    private var spill: [GuestBuffer]?
    /// The number of buffers.
    private(set) var count: Int

    @inline(__always)
    init() {
        inline = InlineArray(repeating: GuestBuffer(address: 0, length: 0))
        spill = nil
        count = 0
    }

    @inline(__always)
    mutating func append(_ buffer: GuestBuffer) {
        if count < Self.inlineCapacity {
            inline[count] = buffer // InlineArray's subscript is bounds-checked as well
        } else if spill == nil {
            // Room for a long scatter list without regrowing from one element.
            var more: [GuestBuffer] = []
            more.reserveCapacity(Self.inlineCapacity * 4)
            more.append(buffer)
            spill = more
        } else {
            spill!.append(buffer)
        }
        count += 1
    }

    /// The buffer at `index`, which must be below `count` (checked: the inline
    /// and spill subscripts trap past their ends).
    @inline(__always)
    subscript(index: Int) -> GuestBuffer {
        precondition(index >= 0 && index < count, "chain buffer index out of range")
        return index < Self.inlineCapacity ? inline[index] : spill![index - Self.inlineCapacity]
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
    /// Total bytes of the readable buffers.
    public let readableLength: Int
    /// Total bytes of the writable buffers.
    public let writableLength: Int
    /// How many of `buffers` (the first ones) are readable.
    public let readableCount: Int
    /// Every buffer, readable then writable.
    let buffers: ChainBuffers

    /// How many buffers are writable.
    public var writableCount: Int { buffers.count - readableCount }

    /// Device-readable (driver to device) buffers, in chain order.
    /// Builds an array: for inspection, not for the I/O path.
    public var readable: [GuestBuffer] { (0..<readableCount).map { buffers[$0] } }
    /// Device-writable (device to driver) buffers, in chain order.
    /// Builds an array: for inspection, not for the I/O path.
    public var writable: [GuestBuffer] { (readableCount..<buffers.count).map { buffers[$0] } }

    /// A chain of the given buffers. `Virtqueue.pop()` builds these after
    /// validating them; a chain built here is still bounds-checked on every access.
    public init(head: UInt16, readable: [GuestBuffer], writable: [GuestBuffer]) {
        var buffers = ChainBuffers()
        for b in readable { buffers.append(b) }
        for b in writable { buffers.append(b) }
        // Each length is below 2^32, and an array holds fewer than 2^31 elements
        // of 12+ bytes in a 64-bit address space, so these sums cannot overflow a 64-bit Int.
        self.init(head: head, buffers: buffers, readableCount: readable.count,
                  readableLength: readable.reduce(0) { $0 + Int($1.length) },
                  writableLength: writable.reduce(0) { $0 + Int($1.length) })
    }

    /// A chain whose totals the caller has already summed (`Virtqueue.pop`).
    @inline(__always)
    init(head: UInt16, buffers: ChainBuffers, readableCount: Int, readableLength: Int, writableLength: Int) {
        self.head = head
        self.buffers = buffers
        self.readableCount = readableCount
        self.readableLength = readableLength
        self.writableLength = writableLength
    }

    /// Copies `into.count` readable bytes starting at `offset` (counted across
    /// buffers) into `into`. Throws if the range runs past the readable part.
    public func read(from memory: GuestMemory, offset: Int, into: UnsafeMutableRawBufferPointer) throws(VirtqueueError) {
        var done = 0
        // SAFETY: each segment is a checked view of guest memory, and the copies fill `into` exactly, in order.
        unsafe try forEachSegment(in: memory, deviceWritable: false, offset: offset, count: into.count) { segment in
            // SAFETY: `segment` is a bounds-checked slice of guest memory, and the
            // segments sum to exactly `into.count`, so `done + segment.count <= into.count`.
            unsafe (into.baseAddress! + done).copyMemory(from: segment.baseAddress!, byteCount: segment.count)
            done += segment.count
        }
    }

    /// Copies `from` into the writable part starting at `offset` (counted across
    /// buffers). Throws if the range runs past the writable part.
    public func write(to memory: GuestMemory, offset: Int, from: UnsafeRawBufferPointer) throws(VirtqueueError) {
        var done = 0
        // SAFETY: each segment is a checked view of guest memory, and the copies take `from` exactly, in order.
        unsafe try forEachSegment(in: memory, deviceWritable: true, offset: offset, count: from.count) { segment in
            // SAFETY: as in `read`, with the roles of the two buffers swapped.
            unsafe segment.baseAddress!.copyMemory(from: from.baseAddress! + done, byteCount: segment.count)
            done += segment.count
        }
    }

    /// Host views of `count` bytes at `offset` in the readable (or writable)
    /// part, one per guest buffer touched, skipping empty buffers: the
    /// scatter-gather list for vectored I/O straight into guest memory.
    ///
    /// Each view is bounds-checked against guest memory and stays valid while `memory` lives.
    public func hostBuffers(in memory: GuestMemory, writable: Bool, offset: Int, count: Int) throws(VirtqueueError) -> [UnsafeMutableRawBufferPointer] {
        // SAFETY: views of guest memory checked by `forEachSegment`; the caller uses them before the guest can reuse
        // the chain.
        var views: [UnsafeMutableRawBufferPointer] = unsafe []
        unsafe views.reserveCapacity(writable ? writableCount : readableCount)
        unsafe try forEachSegment(in: memory, deviceWritable: writable, offset: offset, count: count) { unsafe views.append($0) }
        return unsafe views
    }

    /// Fast path for a request header: the checked host view of the first
    /// `count` readable bytes when the first buffer holds them all, else nil
    /// (then use `read`, which also reports why it fails).
    @inline(__always)
    func leadingReadableView(in memory: GuestMemory, count: Int) -> UnsafeMutableRawBufferPointer? {
        guard readableCount > 0, count >= 0 else { return nil }
        let first = buffers[0]
        guard Int(first.length) >= count else { return nil }
        // SAFETY: a checked slice of guest memory (GuestMemory.slice).
        return unsafe try? memory.slice(at: first.address, count: count)
    }

    /// Fast path for a status byte: the checked host address of the last
    /// writable byte when the last buffer is non-empty, else nil (then use
    /// `write`, which skips trailing empty buffers).
    @inline(__always)
    func lastWritableByte(in memory: GuestMemory) -> UnsafeMutableRawPointer? {
        guard writableCount > 0 else { return nil }
        let last = buffers[buffers.count - 1]
        guard last.length > 0 else { return nil }
        // length - 1 < 2^32, so the sum overflows only for a hostile address: checked.
        let (address, overflow) = last.address.addingReportingOverflow(UInt64(last.length - 1))
        guard !overflow else { return nil }
        // SAFETY: a checked one-byte slice of guest memory.
        return unsafe (try? memory.slice(at: address, count: 1))?.baseAddress
    }

    /// Calls `body` with the checked host view of each non-empty piece of the
    /// byte range `[offset, offset+count)` of one part, in order.
    @inline(__always)
    func forEachSegment(
        in memory: GuestMemory, deviceWritable: Bool, offset: Int, count: Int,
        _ body: (UnsafeMutableRawBufferPointer) -> Void
    ) throws(VirtqueueError) {
        let range = deviceWritable ? readableCount..<buffers.count : 0..<readableCount
        let total = deviceWritable ? writableLength : readableLength
        // Ordered so that no subtraction can go negative and no sum can overflow.
        guard offset >= 0, count >= 0, offset <= total, count <= total - offset else {
            throw .outOfRange(offset: offset, count: count, length: total)
        }
        var skip = offset
        var left = count
        for i in range {
            if left == 0 { break }
            let buffer = buffers[i]
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
            // SAFETY: `slice` checks the range against guest memory; `take` never exceeds the descriptor's length.
            do { unsafe view = unsafe try memory.slice(at: address, count: take) } catch { throw .memory(error) }
            unsafe body(view)
            skip = 0
            left -= take
        }
    }
}
