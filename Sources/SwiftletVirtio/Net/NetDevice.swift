import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSys

/// The host side of virtio-net: frames between a TAP-like fd (one
/// `virtio_net_hdr` + Ethernet frame per read and per write, message
/// boundaries kept) and the guest's rx (0) and tx (1) queues.
///
/// RX: a frame read from the fd stays *pending* in a host buffer until the
/// guest has posted enough buffer space for all of it (with MRG_RXBUF, over
/// several chains, `num_buffers` telling how many); it is never dropped or cut
/// because a buffer is short. Only a guest that offers more chains than its
/// queue holds (re-posting heads it never got back) loses the frame: the
/// chains go back unused, since `num_buffers` and a real driver stop there. While a frame waits for buffers, the fd is taken
/// out of the poll set, so a guest that posts nothing costs no CPU; the
/// guest's next rx notification serves the frame and re-arms the fd.
///
/// TX: each chain's readable part (header + frame) goes to the fd with one
/// `writev`, straight from guest memory.
///
/// Every guest value is hostile: a chain too short for a header, or one the
/// queue rejects, is returned unused; the TAP itself checks the header's
/// GSO fields. Methods run under the transport's service lock (the device
/// event loop's services, and a vCPU's reset or DRIVER_OK), except `init`.
///
/// `@unchecked Sendable`: its frame buffer, held chains and counters are
/// used under the transport's service lock only (`tap` is set in `init`).
///
/// `@safe`: its frame buffer is private, allocated and freed with the
/// device, and every use of it stays inside `VirtioNet.maxFrame`.
@safe public final class NetDevice: @unchecked Sendable {
    /// The fd the frames go through (a TAP's, or a socket in tests); not owned.
    public let fd: Int32
    /// The TAP behind `fd` when the device was made from one: held as long
    /// as the device lives (an `auto` TAP is removed when it goes).
    public private(set) var tap: TapDevice?
    public let mac: MACAddress
    /// Called with TUN_F_* flags when the guest's features are known; nil
    /// (tests over sockets) offers no offloads.
    private let setOffloads: ((UInt32) -> Void)?
    public let deviceFeatures: UInt64
    /// The features the driver accepted, once it is live.
    public private(set) var driverFeatures: UInt64 = 0

    /// The device's own epoll set holding `fd`: the event loop watches it.
    private let poller: Epoll
    private var watching = true
    /// Frames are read here; `pendingLength` > 0 while one waits for buffers.
    private let frame: UnsafeMutableRawBufferPointer
    public private(set) var pendingLength = 0
    /// Chains taken for the pending frame, not yet given back.
    private var held: [DescriptorChain] = []
    private var heldSpace = 0
    /// Frames read from the fd per service before other fds get a turn.
    static let readBudget = 64

    /// Counters (event loop thread).
    public private(set) var rxFrames = 0
    public private(set) var txFrames = 0
    /// Times the rx queue ran dry with a frame pending.
    public private(set) var rxStalls = 0
    /// Chains returned unused (too short, malformed) and failed TAP writes.
    public private(set) var rxBadChains = 0
    /// Frames dropped because the guest offered more chains than its queue holds.
    public private(set) var rxDroppedFrames = 0
    public private(set) var txErrors = 0
    /// Rx services, so the loop can tell "served" from "device not live".
    public private(set) var rxServices = 0

    public init(fd: Int32, mac: MACAddress, offloads: Bool, setOffloads: ((UInt32) -> Void)?) throws(SystemError) {
        self.fd = fd
        self.mac = mac
        self.setOffloads = offloads ? setOffloads : nil
        var features = VirtioFeature.version1 | VirtioNet.featureMAC | VirtioNet.featureMrgRxbuf
            | VirtioFeature.ringEventIdx | VirtioFeature.ringIndirectDesc
        if offloads, setOffloads != nil {
            features |= VirtioNet.featureCsum | VirtioNet.featureGuestCsum
                | VirtioNet.featureGuestTSO4 | VirtioNet.featureGuestTSO6
                | VirtioNet.featureHostTSO4 | VirtioNet.featureHostTSO6
        }
        deviceFeatures = features
        poller = try Epoll()
        try poller.add(fd, tag: 0)
        // SAFETY: freed once, in deinit; used only under the transport's service lock.
        unsafe frame = .allocate(byteCount: VirtioNet.maxFrame, alignment: 16)
    }

    // SAFETY: the frame buffer allocated in init, freed once.
    deinit { unsafe frame.deallocate() }

    /// The epoll fd the device event loop watches: readable while the TAP has
    /// frames and the device can take them.
    public var pollFD: Int32 { poller.fd }
    /// Whether the fd is in the poll set (false while the guest owes buffers).
    public var isWatching: Bool { watching }

    /// Config space: `mac` (6 bytes); nothing else is offered.
    public func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) {
        for i in into.indices {
            let o = offset + i
            // SAFETY: `i` comes from `into.indices`.
            unsafe into[i] = o >= 0 && o < 6 ? mac.bytes[o] : 0
        }
    }

    /// The driver set DRIVER_OK with `features` (on a vCPU thread, so no
    /// system call here: the TAP learns what the guest accepts at the next
    /// queue service, on the device loop).
    public func activate(features: UInt64) {
        driverFeatures = features
        offloadsStale = true
    }

    /// TUN_F_* for what the guest accepts (checksum-offloaded and TSO frames).
    private var offloadsStale = false
    private func applyOffloads() {
        guard offloadsStale else { return }
        offloadsStale = false
        guard let setOffloads else { return }
        let features = driverFeatures
        var flags: UInt32 = 0
        if features & VirtioNet.featureGuestCsum != 0 {
            flags |= SWL_TUN_F_CSUM
            if features & VirtioNet.featureGuestTSO4 != 0 { flags |= SWL_TUN_F_TSO4 }
            if features & VirtioNet.featureGuestTSO6 != 0 { flags |= SWL_TUN_F_TSO6 }
        }
        setOffloads(flags)
    }

    /// The driver reset the device (on a vCPU thread: no system calls): chains
    /// and the pending frame belong to the old queues. The loop stops
    /// watching the TAP when it next finds the device not live (`pause`).
    public func reset() {
        held = []
        heldSpace = 0
        pendingLength = 0
        driverFeatures = 0
        offloadsStale = true
    }

    /// Stops watching the fd until the next rx service (the loop calls this
    /// when the TAP was readable but the device is not live).
    public func pause() { setWatching(false) }

    /// The fd failed for good (the TAP was deleted under us, the peer closed):
    /// it stays out of the poll set and rx delivers nothing more.
    public private(set) var isDead = false

    /// Adds or removes the fd. Removed rather than left with no events: epoll
    /// reports errors and hang-ups whatever the interest, and a TAP whose
    /// interface was deleted reports EPOLLERR forever.
    private func setWatching(_ on: Bool) {
        let want = on && !isDead
        guard want != watching else { return }
        if want {
            do { try poller.add(fd, tag: 0) } catch { return }
        } else {
            poller.remove(fd)
        }
        watching = want
    }

    // MARK: RX

    /// Moves frames from the fd into the rx queue until the fd is empty, the
    /// guest has no room, or the budget is spent. Returns whether to interrupt.
    public func serveRx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        rxServices += 1
        applyOffloads()
        var budget = Self.readBudget
        var used = false
        while true {
            if pendingLength == 0 {
                if budget == 0 { break }
                budget -= 1
                // SAFETY: reads at most the frame buffer's size into it.
                let n = retryingEINTR { unsafe read(fd, frame.baseAddress, frame.count) }
                if n < 0 {
                    if errno != EAGAIN && errno != EWOULDBLOCK { isDead = true }
                    break
                }
                if n == 0 { isDead = true; break }
                // A TAP always prefixes the header; anything shorter is not a frame.
                if n < VirtioNet.headerSize { continue }
                pendingLength = n
            }
            guard try deliverPending(queue, used: &used) else { break }
            rxFrames += 1
        }
        // Watch the fd only while a frame could go somewhere.
        setWatching(pendingLength == 0)
        return used && queue.needsInterrupt()
    }

    /// Pops the next rx chain, returning malformed ones (with a head) unused.
    /// Nil when the ring is empty, after re-enabling notifications.
    private func popRx(_ queue: Virtqueue, used: inout Bool) throws(VirtqueueError) -> DescriptorChain? {
        try queue.popOrEnableNotification(onMalformed: { rxBadChains += 1; used = true })
    }

    /// Delivers the pending frame if the guest has room for it. False when it
    /// must wait for buffers (the chains taken so far stay held).
    private func deliverPending(_ queue: Virtqueue, used: inout Bool) throws(VirtqueueError) -> Bool {
        let total = pendingLength
        let mergeable = driverFeatures & VirtioNet.featureMrgRxbuf != 0
        while heldSpace < total {
            guard let chain = try popRx(queue, used: &used) else {
                rxStalls += 1
                return false
            }
            let space = chain.writableLength
            // Without MRG_RXBUF one chain must hold the whole frame; with it,
            // the first must at least hold the header. A chain that cannot
            // serve goes back empty and the frame waits for the next one.
            let unusable = space == 0
                || (held.isEmpty && space < VirtioNet.headerSize)
                || (!mergeable && space < total)
            if unusable {
                try queue.pushUsed(head: chain.head, length: 0)
                rxBadChains += 1
                used = true
                continue
            }
            held.append(chain)
            heldSpace += space
            // A driver has at most `size` chains outstanding; more means
            // heads posted twice. Bounded here, before num_buffers (le16).
            if held.count >= Int(queue.config.size) && heldSpace < total {
                for c in held { try queue.pushUsed(head: c.head, length: 0) }
                rxBadChains += held.count
                rxDroppedFrames += 1
                held = []
                heldSpace = 0
                pendingLength = 0
                used = true
                return true
            }
        }
        // num_buffers, little-endian (the TAP leaves those bytes alone).
        let count = UInt16(held.count)
        // SAFETY: the num_buffers field lies inside the virtio-net header at the start of the frame buffer.
        unsafe frame[VirtioNet.numBuffersOffset] = UInt8(truncatingIfNeeded: count)
        unsafe frame[VirtioNet.numBuffersOffset + 1] = UInt8(truncatingIfNeeded: count >> 8)
        var offset = 0
        let chains = held
        held = []
        heldSpace = 0
        pendingLength = 0
        for chain in chains {
            let n = min(chain.writableLength, total - offset)
            unsafe try chain.write(to: queue.memory, offset: 0, from: UnsafeRawBufferPointer(rebasing: frame[offset..<offset + n]))
            try queue.pushUsed(head: chain.head, length: UInt32(n))
            offset += n
        }
        used = true
        return true
    }

    // MARK: TX

    /// Writes every available tx chain to the fd. Returns whether to interrupt.
    public func serveTx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        applyOffloads()
        let used = try queue.drain(onMalformed: { txErrors += 1 }) { chain in
            transmit(chain, memory: queue.memory)
            return 0
        }
        return used && queue.needsInterrupt()
    }

    private func transmit(_ chain: DescriptorChain, memory: GuestMemory) {
        let length = chain.readableLength
        guard length >= VirtioNet.headerSize, length <= VirtioNet.maxFrame else {
            txErrors += 1
            return
        }
        // SAFETY: views of guest memory checked by the chain, read by one writev before this returns.
        guard let views = unsafe try? chain.hostBuffers(in: memory, writable: false, offset: 0, count: length),
              unsafe views.count <= 1024 /* IOV_MAX */ else {
            txErrors += 1
            return
        }
        var iovs = unsafe views.map { unsafe iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let n = retryingEINTR { unsafe writev(fd, &iovs, Int32(iovs.count)) }
        // A full TAP queue or a frame the kernel refuses (bad GSO header)
        // costs that frame: the guest's own protocols retransmit.
        if n == length { txFrames += 1 } else { txErrors += 1 }
    }
}

extension NetDevice {
    /// A device on `tap`, offering the offloads the TAP supports.
    public convenience init(tap: TapDevice, mac: MACAddress) throws(SystemError) {
        try self.init(fd: tap.fd, mac: mac, offloads: tap.supportsOffloads) { tap.setOffloads($0) }
        self.tap = tap
    }
}

// MARK: - The device behind the MMIO transport

extension NetDevice: VirtioDevice {
    public var deviceID: UInt32 { VirtioNet.deviceID }
    /// rx (0) and tx (1), served on the device event loop.
    public var queueMaxSizes: [UInt16] { [VirtioNet.queueSize, VirtioNet.queueSize] }

    public func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        switch index {
        case VirtioNet.rxQueue: return try serveRx(queue)
        case VirtioNet.txQueue: return try serveTx(queue)
        default: return false
        }
    }

    /// The event loop's handler for `pollFD` (the TAP has frames): serve rx
    /// through `transport`. When the device is not live the transport does
    /// not serve, and the TAP is unwatched until the guest's next rx
    /// notification, so a level-triggered fd never spins the loop.
    public func handleTapReadable(_ transport: VirtioMMIOTransport) {
        let before = rxServices
        transport.serve(queue: VirtioNet.rxQueue)
        if rxServices == before { pause() }
    }
}
