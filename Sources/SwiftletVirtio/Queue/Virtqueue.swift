import Synchronization
import SwiftletMemory

/// Where a split virtqueue lives, as the driver wrote it through the transport.
public struct VirtqueueConfig: Sendable, Equatable {
    /// Number of descriptors (and ring entries).
    public var size: UInt16
    /// Guest-physical address of the descriptor table (16-byte aligned).
    public var descTable: UInt64
    /// Guest-physical address of the available (driver) ring (2-byte aligned).
    public var availRing: UInt64
    /// Guest-physical address of the used (device) ring (4-byte aligned).
    public var usedRing: UInt64

    public init(size: UInt16, descTable: UInt64, availRing: UInt64, usedRing: UInt64) {
        self.size = size
        self.descTable = descTable
        self.availRing = availRing
        self.usedRing = usedRing
    }
}

/// The device side of a split virtqueue (virtio 1.x, section 2.7).
///
/// Everything read from guest memory is treated as hostile: ring indices,
/// descriptor addresses, lengths, flags and links are validated before use,
/// and a malformed chain is consumed and reported rather than wedging the queue.
///
/// Not thread-safe: one thread at a time pops and pushes. The driver runs
/// concurrently on other CPUs; the index loads and stores are atomic with the
/// barriers the spec asks for.
///
/// `@unchecked Sendable`: it holds raw pointers into guest memory and its
/// indices; one thread at a time uses it (the transport's service lock).
///
/// `@safe`: its ring pointers were checked against guest memory when the
/// driver set the queue up (`ring`); every use of them below stays inside.
@safe public final class Virtqueue: @unchecked Sendable {
    /// Descriptor flags (section 2.7.5).
    enum DescFlag {
        static let next: UInt16 = 1
        static let write: UInt16 = 2
        static let indirect: UInt16 = 4
    }
    /// VIRTQ_AVAIL_F_NO_INTERRUPT.
    static let availNoInterrupt: UInt16 = 1
    /// The largest queue size a split ring may have.
    public static let maxQueueSize: UInt16 = 32768

    /// The guest memory the rings and buffers live in.
    public let memory: GuestMemory
    /// The rings' location and size.
    public let config: VirtqueueConfig
    /// Whether VIRTIO_F_EVENT_IDX was negotiated.
    public let eventIndex: Bool
    /// Whether VIRTIO_F_INDIRECT_DESC was negotiated.
    public let indirect: Bool

    private let size: Int
    private let mask: UInt16
    /// The most entries an indirect table may hold.
    private let maxIndirect: Int
    // Host views of the three rings, bounds-checked once in `init`. GuestMemory's
    // regions never move while it lives, and `memory` keeps it alive.
    private let desc: UnsafeMutableRawPointer   // 16 * size bytes
    private let avail: UnsafeMutableRawPointer  // 6 + 2 * size bytes
    private let used: UnsafeMutableRawPointer   // 6 + 8 * size bytes

    // The ring counters are plain integers touched on every request. Class
    // properties get a dynamic exclusivity check (a runtime call) per access;
    // these opt out: the queue is single-threaded by contract, no accessor
    // hands out an `inout` reference to them, and a conflicting access to a
    // trivial integer could not corrupt memory anyway.
    /// The next available-ring index the device will read.
    @exclusivity(unchecked) public private(set) var nextAvail: UInt16
    /// The next used-ring index the device will write.
    @exclusivity(unchecked) public private(set) var nextUsed: UInt16
    /// `nextUsed` at the last `needsInterrupt` call, and the pushes since.
    @exclusivity(unchecked) private var signalledUsed: UInt16
    @exclusivity(unchecked) private var pushedSinceSignal = 0
    /// Whether `broken` is set: checked on every `pop` without touching the
    /// (reference-counted, exclusivity-checked) error itself.
    @exclusivity(unchecked) private var isBroken = false
    /// Set once the driver corrupts the available index; every later `pop` throws it.
    private var broken: VirtqueueError?

    /// Validates `config` against `memory`: the size is a power of two in
    /// `1...maxSize`, each ring is aligned and lies inside one memory region.
    ///
    /// `nextAvail` and `nextUsed` start a queue mid-stream (snapshot restore,
    /// tests); a freshly enabled queue starts both at 0.
    /// `maxSize` is the size the device offers; indirect tables may hold up to
    /// that many entries even when the driver chose a smaller ring, because
    /// drivers size indirect tables from the device's `seg_max`.
    public init(
        memory: GuestMemory, config: VirtqueueConfig, maxSize: UInt16, eventIndex: Bool, indirect: Bool,
        nextAvail: UInt16 = 0, nextUsed: UInt16 = 0
    ) throws(VirtqueueError) {
        let limit = min(maxSize, Self.maxQueueSize)
        guard config.size > 0, config.size <= limit, config.size & (config.size - 1) == 0 else {
            throw .invalidSize(config.size, max: limit)
        }
        let size = Int(config.size)
        func ring(_ part: VirtqueuePart, _ address: UInt64, align: UInt64, length: Int) throws(VirtqueueError) -> UnsafeMutableRawPointer {
            guard address % align == 0 else { throw .misaligned(part, address: address) }
            // SAFETY: the ring's whole extent is checked against guest memory once, here; the rings keep these
            // pointers.
            guard let view = unsafe try? memory.slice(at: address, count: length) else {
                throw .ringOutOfBounds(part, address: address, length: length)
            }
            return view.baseAddress!
        }
        // The spec sizes the rings including used_event / avail_event whether
        // or not EVENT_IDX is negotiated.
        // SAFETY: each ring's extent is checked by `ring`; `nextAvail` and the
        // rest are `@exclusivity(unchecked)` state that only this init touches yet.
        unsafe desc = unsafe try ring(.descriptorTable, config.descTable, align: 16, length: 16 * size)
        unsafe avail = unsafe try ring(.availRing, config.availRing, align: 2, length: 6 + 2 * size)
        unsafe used = unsafe try ring(.usedRing, config.usedRing, align: 4, length: 6 + 8 * size)
        self.memory = memory
        self.config = config
        self.eventIndex = eventIndex
        self.indirect = indirect
        self.size = size
        self.mask = config.size - 1
        self.maxIndirect = Int(max(limit, config.size))
        unsafe self.nextAvail = nextAvail
        unsafe self.nextUsed = nextUsed
        unsafe self.signalledUsed = nextUsed
    }

    // MARK: - Ring fields

    /// An aligned 16-bit ring field, for atomic access.
    /// SAFETY: every caller passes an even offset inside its ring (checked in
    /// `init`). The rings are at least 2-aligned in guest-physical terms, and
    /// regions are page-aligned on both sides, so the host address is too:
    /// aligned for `Atomic<UInt16>`, which has the layout of a `UInt16`.
    @inline(__always)
    private func field16(_ ring: UnsafeMutableRawPointer, _ offset: Int) -> UnsafeMutablePointer<Atomic<UInt16>> {
        unsafe (ring + offset).assumingMemoryBound(to: Atomic<UInt16>.self)
    }
    // SAFETY: the offsets below lie inside the rings' checked extents (see `field16`).
    private var availFlags: UnsafeMutablePointer<Atomic<UInt16>> { unsafe field16(avail, 0) }
    private var availIdx: UnsafeMutablePointer<Atomic<UInt16>> { unsafe field16(avail, 2) }
    private var usedEvent: UnsafeMutablePointer<Atomic<UInt16>> { unsafe field16(avail, 4 + 2 * size) }
    private var usedIdx: UnsafeMutablePointer<Atomic<UInt16>> { unsafe field16(used, 2) }
    private var availEvent: UnsafeMutablePointer<Atomic<UInt16>> { unsafe field16(used, 4 + 8 * size) }

    /// One descriptor as read from a table: a private copy, so the guest
    /// changing the table afterwards changes nothing we validated.
    struct Descriptor {
        var address: UInt64
        var length: UInt32
        var flags: UInt16
        var next: UInt16

        /// SAFETY: the caller guarantees `table` holds at least `16 * (index + 1)` bytes.
        @inline(__always)
        init(_ table: UnsafeRawPointer, index: Int) {
            let p = unsafe table + 16 * index
            address = unsafe UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            length = unsafe UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            flags = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            next = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
        }
    }

    // MARK: - Device operations

    /// The next chain a device can serve, or nil when the ring is empty.
    ///
    /// A malformed chain fails alone: when its head is known it goes back to
    /// the driver unused (length 0) and `returnedMalformed` runs (to count it,
    /// and to note that the used ring moved), then the next chain is tried.
    /// An error with no head means the queue itself is unusable: it is thrown.
    public func popServable(returnedMalformed: () -> Void) throws(VirtqueueError) -> DescriptorChain? {
        while true {
            do {
                return try pop()
            } catch {
                guard let head = error.head else { throw error }
                try pushUsed(head: head, length: 0)
                returnedMalformed()
            }
        }
    }

    /// Serves every available chain: `serve` handles one and returns the
    /// bytes it wrote into the chain's device-writable buffers, and the chain
    /// goes back to the driver with that length. When the ring is empty,
    /// notifications are re-enabled and the ring looked at once more (buffers
    /// the driver added meanwhile would otherwise wait for a notification
    /// that never comes). `stop` ends the service early, the rest left in the
    /// ring (a device that cannot take more now). Malformed chains go back
    /// unused (`popServable`). Returns whether any chain went back; the caller
    /// then asks `needsInterrupt()`.
    public func drain(
        onMalformed: () -> Void = {},
        stop: () -> Bool = { false },
        _ serve: (DescriptorChain) throws(VirtqueueError) -> UInt32
    ) throws(VirtqueueError) -> Bool {
        var used = false
        repeat {
            while !stop(), let chain = try popServable(returnedMalformed: { onMalformed(); used = true }) {
                try pushUsed(head: chain.head, length: try serve(chain))
                used = true
            }
        } while !stop() && enableNotification()
        return used
    }

    /// The next servable chain, or nil when the ring is empty even after
    /// notifications were re-enabled (see `drain`): for a device that takes
    /// chains one at a time as it has data for them (rx).
    public func popOrEnableNotification(onMalformed: () -> Void) throws(VirtqueueError) -> DescriptorChain? {
        while true {
            if let chain = try popServable(returnedMalformed: onMalformed) { return chain }
            if !enableNotification() { return nil }
        }
    }

    /// The next available chain, or nil when the ring is empty.
    ///
    /// A malformed chain throws `.malformedChain` after consuming its available
    /// entry, so the queue moves on; when the error carries a head, the caller
    /// should `pushUsed(head:length: 0)` so the driver gets it back.
    /// An available index more than a queue size ahead throws `.availIndexJump`,
    /// and keeps throwing: the driver must reset the queue.
    public func pop() throws(VirtqueueError) -> DescriptorChain? {
        // SAFETY: `@exclusivity(unchecked)` state: one thread at a time uses the queue (the transport's service
        // lock).
        if unsafe isBroken, let broken { throw broken }
        // Acquire: the ring entry and descriptors the driver wrote before
        // publishing this index are visible to the reads below.
        let availIndex = unsafe UInt16(littleEndian: availIdx.pointee.load(ordering: .acquiring))
        let pending = unsafe availIndex &- nextAvail // wrapping: both are free-running 16-bit counters
        if pending == 0 { return nil }
        guard pending <= config.size else {
            let error = unsafe VirtqueueError.availIndexJump(availIndex: availIndex, nextAvail: nextAvail, size: config.size)
            broken = error
            unsafe isBroken = true
            throw error
        }
        // SAFETY: the slot is masked below `size`, inside the avail ring's 6 + 2*size bytes.
        let slot = unsafe Int(nextAvail & mask)
        let head = unsafe UInt16(littleEndian: avail.loadUnaligned(fromByteOffset: 4 + 2 * slot, as: UInt16.self))
        unsafe nextAvail &+= 1
        return try chain(at: head)
    }

    /// Walks the chain starting at descriptor `head`.
    private func chain(at head: UInt16) throws(VirtqueueError) -> DescriptorChain {
        guard head < config.size else {
            throw .malformedChain(head: nil, "head index \(head) is past the queue size \(size)")
        }
        var builder = ChainBuilder(head: head)
        var index = Int(head)
        var count = 0
        while true {
            // Bounding the walk by the table size also catches loops.
            count += 1
            guard count <= size else { throw builder.fail("longer than the queue size \(size) (a loop?)") }
            // SAFETY: index < size, and the table holds 16 * size bytes.
            let d = unsafe Descriptor(desc, index: index)
            if d.flags & DescFlag.indirect != 0 {
                guard indirect else { throw builder.fail("indirect descriptor without VIRTIO_F_INDIRECT_DESC") }
                guard d.flags & DescFlag.next == 0 else { throw builder.fail("indirect descriptor with NEXT set") }
                try walkIndirect(d, &builder)
                break
            }
            try builder.append(d, memory: memory)
            guard d.flags & DescFlag.next != 0 else { break }
            guard d.next < config.size else { throw builder.fail("next index \(d.next) is past the queue size \(size)") }
            index = Int(d.next)
        }
        return builder.finish()
    }

    /// Appends the chain held in the indirect table that `d` points at.
    private func walkIndirect(_ d: Descriptor, _ builder: inout ChainBuilder) throws(VirtqueueError) {
        guard d.length > 0, d.length % 16 == 0 else {
            throw builder.fail("indirect table length \(d.length) is not a non-zero multiple of 16")
        }
        let entries = Int(d.length / 16)
        guard entries <= maxIndirect else {
            throw builder.fail("indirect table of \(entries) entries exceeds \(maxIndirect)")
        }
        // SAFETY: the indirect table's extent is checked against guest memory; entries are copied out before use.
        guard let table = unsafe try? memory.slice(at: d.address, count: Int(d.length)) else {
            throw builder.fail("indirect table at 0x\(String(d.address, radix: 16)) (\(d.length) bytes) is outside guest memory")
        }
        var index = 0
        var count = 0
        while true {
            count += 1
            guard count <= entries else { throw builder.fail("indirect chain longer than its table (a loop?)") }
            // SAFETY: index < entries, and the checked slice holds 16 * entries bytes.
            let e = unsafe Descriptor(UnsafeRawPointer(table.baseAddress!), index: index)
            guard e.flags & DescFlag.indirect == 0 else { throw builder.fail("nested indirect descriptor") }
            try builder.append(e, memory: memory)
            guard e.flags & DescFlag.next != 0 else { break }
            guard Int(e.next) < entries else {
                throw builder.fail("indirect next index \(e.next) is past the table's \(entries) entries")
            }
            index = Int(e.next)
        }
    }

    /// Puts `head` on the used ring with `length` bytes written into its chain,
    /// then publishes the new used index with release ordering, so the driver
    /// sees the element (and the data written into the buffers) first.
    public func pushUsed(head: UInt16, length: UInt32) throws(VirtqueueError) {
        guard head < config.size else { throw .invalidUsedHead(head, size: config.size) }
        // SAFETY: the slot is masked below `size`, so the 8-byte element lies
        // inside the used ring's 6 + 8*size bytes.
        let element = unsafe 4 + 8 * Int(nextUsed & mask)
        unsafe used.storeBytes(of: UInt32(head).littleEndian, toByteOffset: element, as: UInt32.self)
        unsafe used.storeBytes(of: length.littleEndian, toByteOffset: element + 4, as: UInt32.self)
        unsafe nextUsed &+= 1
        unsafe usedIdx.pointee.store(nextUsed.littleEndian, ordering: .releasing)
        unsafe pushedSinceSignal += 1
    }

    /// Whether the driver wants an interrupt for the used entries pushed since
    /// the last call: never when none were pushed; with EVENT_IDX, when the used
    /// index passed `used_event`; otherwise unless the driver set NO_INTERRUPT.
    /// Call once after a batch of `pushUsed`.
    public func needsInterrupt() -> Bool {
        // SAFETY: `@exclusivity(unchecked)` state, used by one thread at a time.
        guard unsafe pushedSinceSignal > 0 else { return false }
        let old = unsafe signalledUsed
        let new = unsafe nextUsed
        let pushed = unsafe pushedSinceSignal
        unsafe signalledUsed = new
        unsafe pushedSinceSignal = 0
        // Full fence: the used index store must be visible before we read the
        // driver's suppression state, or we could miss a driver that just
        // re-enabled interrupts after seeing the old index.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            // 2^16 pushes wrap the window; the driver has surely asked by then.
            if pushed >= 1 << 16 { return true }
            // SAFETY: used_event lies inside the available ring's checked extent (see `field16`).
            let event = unsafe UInt16(littleEndian: usedEvent.pointee.load(ordering: .relaxed))
            // "used_event is in [old, new)", in wrapping 16-bit arithmetic.
            return new &- event &- 1 < new &- old
        }
        // SAFETY: the flags field lies inside the available ring's checked extent.
        return unsafe UInt16(littleEndian: availFlags.pointee.load(ordering: .relaxed)) & Self.availNoInterrupt == 0
    }

    /// Before going idle: with EVENT_IDX, publishes `avail_event` = `nextAvail`
    /// so the driver notifies on its next buffer. Returns true when buffers
    /// arrived meanwhile, in which case the caller must `pop()` again instead
    /// of waiting for a notification that may never come.
    public func enableNotification() -> Bool {
        // SAFETY: `@exclusivity(unchecked)` state, used by one thread at a time.
        if unsafe isBroken { return false }
        if eventIndex {
            unsafe availEvent.pointee.store(nextAvail.littleEndian, ordering: .relaxed)
        }
        // Full fence: publish avail_event before re-reading avail.idx, pairing
        // with the driver's fence between writing avail.idx and reading avail_event.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return unsafe UInt16(littleEndian: availIdx.pointee.load(ordering: .acquiring)) != nextAvail
    }
}

/// Collects a chain's buffers while enforcing the per-buffer rules.
///
/// Builds the chain's inline buffer storage directly, and borrows the guest
/// memory per call rather than holding it, so a typical chain costs no
/// allocation and no reference counting.
struct ChainBuilder {
    let head: UInt16
    var buffers = ChainBuffers()
    var readableCount = 0
    var readableLength: UInt64 = 0
    var writableLength: UInt64 = 0

    @inline(__always)
    init(head: UInt16) {
        self.head = head
    }

    func fail(_ why: String) -> VirtqueueError { .malformedChain(head: head, why) }

    @inline(__always)
    mutating func append(_ d: Virtqueue.Descriptor, memory: GuestMemory) throws(VirtqueueError) {
        // Empty buffers are legal and their address is never used, so only
        // non-empty ones must lie inside guest memory.
        // SAFETY: only whether the buffer lies inside guest memory is asked; no pointer is kept.
        if unsafe d.length > 0 && (try? memory.slice(at: d.address, count: Int(d.length))) == nil {
            throw fail("buffer at 0x\(String(d.address, radix: 16)) (\(d.length) bytes) is outside guest memory")
        }
        // At most 2^17 buffers of < 2^32 bytes: no sum can overflow.
        guard readableLength + writableLength + UInt64(d.length) <= UInt64(UInt32.max) else {
            throw fail("chain is longer than 4 GiB")
        }
        if d.flags & Virtqueue.DescFlag.write != 0 {
            writableLength += UInt64(d.length)
        } else {
            guard readableCount == buffers.count else { throw fail("device-readable buffer after a device-writable one") }
            readableLength += UInt64(d.length)
            readableCount += 1
        }
        buffers.append(GuestBuffer(address: d.address, length: d.length))
    }

    @inline(__always)
    func finish() -> DescriptorChain {
        // Both totals are at most UInt32.max (checked in `append`).
        DescriptorChain(head: head, buffers: buffers, readableCount: readableCount,
                        readableLength: Int(readableLength), writableLength: Int(writableLength))
    }
}
