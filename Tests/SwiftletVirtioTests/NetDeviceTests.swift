import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import Testing
import SwiftletTestSupport

/// A virtio-net device over one end of a SOCK_SEQPACKET pair, which keeps
/// message boundaries the way a TAP does: the test's end plays the TAP's
/// host side (each message is a 12-byte virtio-net header and a frame), two
/// `TestDriver`s play the guest's rx and tx queues.
final class NetFixture {
    let rx: TestDriver
    let tx: TestDriver
    let rxQueue: Virtqueue
    let txQueue: Virtqueue
    let device: NetDevice
    let deviceEnd: Int32
    private(set) var peer: Int32
    /// The rx buffers posted, by head.
    var rxBuffers: [UInt16: (address: UInt64, length: Int)] = [:]
    private var nextUsedRx: UInt16 = 0

    init(mergeable: Bool = true, size: UInt16 = 128) throws {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw TestFailure("socketpair")
        }
        deviceEnd = fds[0]
        peer = fds[1]
        var big: Int32 = 4 << 20
        setsockopt(peer, SOL_SOCKET, SO_SNDBUF, &big, 4)
        setsockopt(deviceEnd, SOL_SOCKET, SO_SNDBUF, &big, 4)
        rx = try TestDriver(size: size, memorySize: 16 << 20)
        tx = try TestDriver(size: size, memorySize: 16 << 20)
        rxQueue = try rx.queue()
        txQueue = try tx.queue()
        device = try NetDevice(fd: deviceEnd, mac: MACAddress(bytes: [2, 0, 0, 0, 0, 1]), offloads: false, setOffloads: nil)
        device.activate(features: VirtioFeature.version1 | (mergeable ? VirtioNet.featureMrgRxbuf : 0))
    }

    deinit {
        close(deviceEnd)
        if peer >= 0 { close(peer) }
    }

    func closePeer() {
        close(peer)
        peer = -1
    }

    /// Posts one writable buffer of `length` bytes per entry.
    @discardableResult
    func postRx(_ lengths: [Int]) throws -> [UInt16] {
        var heads: [UInt16] = []
        for n in lengths {
            let a = rx.alloc(n)
            let head = try rx.chain([Buf(address: a, length: UInt32(n), writable: true)])
            try rx.publish(head)
            rxBuffers[head] = (a, n)
            heads.append(head)
        }
        return heads
    }

    /// The host side sends `frame` (after a zero header).
    func hostSend(_ frame: [UInt8]) throws {
        let message = [UInt8](repeating: 0, count: VirtioNet.headerSize) + frame
        let n = message.withUnsafeBytes { send(peer, $0.baseAddress, $0.count, 0) }
        guard n == message.count else { throw TestFailure("send: \(n)") }
    }

    /// The used rx entries since the last call: (head, length, bytes written).
    func takeUsedRx() throws -> [(head: UInt16, length: Int, bytes: [UInt8])] {
        var out: [(UInt16, Int, [UInt8])] = []
        while nextUsedRx != rx.usedIdx {
            let e = try rx.used(nextUsedRx)
            nextUsedRx &+= 1
            let head = UInt16(e.id)
            let b = rxBuffers[head]!
            out.append((head, Int(e.length), try rx.memory.read(at: b.address, count: Int(e.length))))
        }
        return out
    }

    /// Reassembles received frames from used entries: header's num_buffers
    /// tells how many entries make one frame. Returns (numBuffers, frame without header).
    func receivedFrames() throws -> [(buffers: Int, frame: [UInt8])] {
        var entries = try takeUsedRx().filter { $0.length > 0 }[...]
        var frames: [(Int, [UInt8])] = []
        while let first = entries.first {
            let count = Int(first.bytes[10]) | Int(first.bytes[11]) << 8
            guard count >= 1, entries.count >= count else { throw TestFailure("num_buffers \(count) with \(entries.count) entries") }
            let bytes = entries.prefix(count).flatMap(\.bytes)
            frames.append((count, Array(bytes.dropFirst(VirtioNet.headerSize))))
            entries = entries.dropFirst(count)
        }
        return frames
    }

    /// Offers one tx chain of readable buffers holding `pieces`.
    func postTx(_ pieces: [[UInt8]]) throws {
        var bufs: [Buf] = []
        for p in pieces { bufs.append(Buf(address: try tx.put(p), length: UInt32(p.count), writable: false)) }
        try tx.publish(try tx.chain(bufs))
    }

    /// One message from the host end, or nil when none is waiting.
    func hostReceive() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 70_000)
        let n = buf.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
        return n < 0 ? nil : Array(buf[0..<n])
    }

    /// Whether the device's poll fd is readable right now.
    var pollReadable: Bool {
        var p = pollfd(fd: device.pollFD, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) == 1
    }
}

func frameBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var r = TestRandom(state: seed)
    return r.bytes(n)
}

@Suite("NetDevice rx")
struct NetDeviceRxTests {
    @Test func frameInOneBufferIsByteExactWithNumBuffers() throws {
        let f = try NetFixture()
        try f.postRx([2048])
        let frame = frameBytes(1514, seed: 1)
        try f.hostSend(frame)
        #expect(f.pollReadable)
        _ = try f.device.serveRx(f.rxQueue)
        let got = try f.receivedFrames()
        #expect(got.count == 1)
        #expect(got.first?.buffers == 1)
        #expect(got.first?.frame == frame)
        #expect(f.device.isWatching)
        #expect(!f.pollReadable, "drained: nothing left to poll")
    }

    @Test func largeFrameSpansShortBuffersWithMergeable() throws {
        let f = try NetFixture()
        try f.postRx([1000, 1000, 1000, 1000, 1000])
        let frame = frameBytes(3000, seed: 2)
        try f.hostSend(frame)
        _ = try f.device.serveRx(f.rxQueue)
        let used = try f.takeUsedRx()
        #expect(used.map(\.length) == [1000, 1000, 1000, 12])
        let all = used.flatMap(\.bytes)
        #expect(all[10] == 4 && all[11] == 0, "num_buffers = 4")
        #expect(Array(all.dropFirst(12)) == frame)
    }

    @Test func sixtyFourKiBFrameOverPageSizedBuffers() throws {
        let f = try NetFixture()
        try f.postRx([Int](repeating: 4096, count: 20))
        let frame = frameBytes(65_535 + 14, seed: 3)
        try f.hostSend(frame)
        _ = try f.device.serveRx(f.rxQueue)
        let got = try f.receivedFrames()
        #expect(got.count == 1)
        #expect(got.first?.buffers == 17)
        #expect(got.first?.frame == frame)
    }

    @Test func frameWaitsForBuffersAndIsNeverDropped() throws {
        let f = try NetFixture()
        try f.postRx([1000])
        let a = frameBytes(3000, seed: 4), b = frameBytes(60, seed: 5)
        try f.hostSend(a)
        try f.hostSend(b)
        _ = try f.device.serveRx(f.rxQueue)
        #expect(try f.takeUsedRx().isEmpty, "the one buffer is held, not used with a cut frame")
        #expect(f.device.pendingLength == 3012)
        #expect(!f.device.isWatching)
        #expect(!f.pollReadable, "no polling while the guest owes buffers")
        try f.postRx([1000, 1000, 1000])
        _ = try f.device.serveRx(f.rxQueue)
        var got = try f.receivedFrames()
        #expect(got.map(\.frame) == [a])
        #expect(!f.device.isWatching, "frame b waits for a buffer")
        try f.postRx([100])
        _ = try f.device.serveRx(f.rxQueue)
        got = try f.receivedFrames()
        #expect(got.map(\.frame) == [b])
        #expect(f.device.isWatching)
        #expect(f.device.rxFrames == 2)
    }

    @Test func noBuffersMeansAQuietPollFD() throws {
        let f = try NetFixture()
        for i in 0..<10 { try f.hostSend(frameBytes(100, seed: UInt64(i))) }
        #expect(f.pollReadable)
        let interrupt = try f.device.serveRx(f.rxQueue)
        #expect(!interrupt)
        #expect(!f.pollReadable, "the TAP left the poll set: an event loop would sleep")
        // A busy loop would keep serving; count how often polling says ready.
        var ready = 0
        for _ in 0..<100 where f.pollReadable { ready += 1 }
        #expect(ready == 0)
        try f.postRx([Int](repeating: 200, count: 10))
        _ = try f.device.serveRx(f.rxQueue)
        #expect(try f.receivedFrames().map(\.frame) == (0..<10).map { frameBytes(100, seed: UInt64($0)) })
        #expect(f.device.isWatching)
    }

    @Test func withoutMergeableAShortChainGoesBackEmpty() throws {
        let f = try NetFixture(mergeable: false)
        try f.postRx([100, 2048])
        let frame = frameBytes(500, seed: 6)
        try f.hostSend(frame)
        _ = try f.device.serveRx(f.rxQueue)
        let used = try f.takeUsedRx()
        #expect(used.map(\.length) == [0, 512])
        #expect(Array(used[1].bytes.dropFirst(12)) == frame)
        #expect(used[1].bytes[10] == 1)
        #expect(f.device.rxBadChains == 1)
    }

    @Test func hostileRxChainsAreReturnedUnused() throws {
        let f = try NetFixture()
        // Readable-only chain, a first chain shorter than the header, then a good one.
        let a = f.rx.alloc(64)
        let h1 = try f.rx.chain([Buf(address: a, length: 64, writable: false)])
        try f.rx.publish(h1)
        f.rxBuffers[h1] = (a, 64)
        try f.postRx([8, 256])
        // A chain pointing outside guest memory.
        let h3 = try f.rx.chain([Buf(address: 1 << 40, length: 4096, writable: true)])
        try f.rx.publish(h3)
        f.rxBuffers[h3] = (0, 0)
        let frame = frameBytes(100, seed: 7)
        try f.hostSend(frame)
        try f.hostSend(frame)
        try f.postRx([256])
        _ = try f.device.serveRx(f.rxQueue)
        let used = try f.takeUsedRx()
        #expect(used.map(\.length) == [0, 0, 112, 0, 112])
        #expect(f.device.rxBadChains == 3)
    }

    @Test("a guest that re-posts one tiny chain past 65,535 held chains gets them back unused; the frame is dropped, nothing traps")
    func rePostedHeadsAreBounded() throws {
        let f = try NetFixture(size: 128)
        try f.postRx([12]) // the header fits; then 1-byte chains, forever the same head
        let a = f.rx.alloc(1)
        let tiny = try f.rx.chain([Buf(address: a, length: 1, writable: true)])
        f.rxBuffers[tiny] = (a, 1)
        try f.hostSend(frameBytes(65_535 + 14, seed: 9))
        for _ in 0..<600 {
            for _ in 0..<120 { try f.rx.publish(tiny) }
            _ = try f.device.serveRx(f.rxQueue)
            if f.device.rxDroppedFrames > 0 { break }
        }
        #expect(f.device.rxDroppedFrames == 1)
        #expect(f.device.pendingLength == 0)
        #expect(f.device.rxBadChains >= 128)
        #expect(try f.takeUsedRx().allSatisfy { $0.length == 0 }, "every held chain went back unused")
    }

    @Test func aBudgetLetsOtherDevicesRun() throws {
        let f = try NetFixture(size: 256)
        try f.postRx([Int](repeating: 128, count: 200))
        for i in 0..<100 { try f.hostSend(frameBytes(60, seed: UInt64(100 + i))) }
        _ = try f.device.serveRx(f.rxQueue)
        #expect(f.device.rxFrames == 64)
        #expect(f.device.isWatching && f.pollReadable, "more to read: stays in the poll set")
        _ = try f.device.serveRx(f.rxQueue)
        #expect(f.device.rxFrames == 100)
        #expect(try f.receivedFrames().map(\.frame) == (0..<100).map { frameBytes(60, seed: UInt64(100 + $0)) })
    }

    @Test func aDeadFdLeavesThePollSet() throws {
        let f = try NetFixture()
        try f.postRx([2048])
        f.closePeer() // the "TAP" goes away: epoll would report a hang-up forever
        #expect(f.pollReadable)
        _ = try f.device.serveRx(f.rxQueue)
        #expect(f.device.isDead)
        #expect(!f.device.isWatching)
        #expect(!f.pollReadable, "no busy loop on a dead fd")
        _ = try f.device.serveRx(f.rxQueue)
        #expect(!f.pollReadable)
    }

    @Test func resetDropsHeldChains() throws {
        let f = try NetFixture()
        try f.postRx([100])
        try f.hostSend(frameBytes(1000, seed: 8))
        _ = try f.device.serveRx(f.rxQueue)
        #expect(f.device.pendingLength > 0)
        f.device.reset()
        #expect(f.device.pendingLength == 0)
        f.device.pause()
        #expect(!f.device.isWatching)
    }
}

@Suite("NetDevice tx and config")
struct NetDeviceTxTests {
    @Test func txChainIsOneByteExactWrite() throws {
        let f = try NetFixture()
        let header = [UInt8](repeating: 0, count: 12)
        let frame = frameBytes(3000, seed: 9)
        try f.postTx([header, Array(frame[0..<10]), Array(frame[10..<2000]), Array(frame[2000...])])
        let interrupt = try f.device.serveTx(f.txQueue)
        #expect(interrupt)
        #expect(f.hostReceive() == header + frame)
        #expect(f.hostReceive() == nil)
        #expect(f.tx.usedIdx == 1)
        #expect(try f.tx.used(0).length == 0)
        #expect(f.device.txFrames == 1)
    }

    @Test func headerAndFrameInOneBuffer() throws {
        let f = try NetFixture()
        var message = [UInt8](repeating: 0, count: 12)
        message[0] = 1 // NEEDS_CSUM passes through to the TAP untouched
        message += frameBytes(60, seed: 10)
        try f.postTx([message])
        _ = try f.device.serveTx(f.txQueue)
        #expect(f.hostReceive() == message)
    }

    @Test func hostileTxChainsAreNotWritten() throws {
        let f = try NetFixture()
        try f.postTx([[1, 2, 3, 4, 5]])                                    // shorter than a header
        let w = f.tx.alloc(100)
        try f.tx.publish(try f.tx.chain([Buf(address: w, length: 100, writable: true)])) // nothing readable
        try f.tx.publish(try f.tx.chain([Buf(address: f.tx.alloc(70_000), length: 70_000, writable: false)])) // over 64 KiB
        try f.tx.publish(try f.tx.chain([Buf(address: 1 << 40, length: 64, writable: false)])) // outside memory
        let good = [UInt8](repeating: 0, count: 12) + frameBytes(80, seed: 11)
        try f.postTx([good])
        _ = try f.device.serveTx(f.txQueue)
        #expect(f.hostReceive() == good)
        #expect(f.hostReceive() == nil)
        #expect(f.tx.usedIdx == 5, "every chain went back")
        #expect(f.device.txErrors == 4)
        #expect(f.device.txFrames == 1)
    }

    @Test func configSpaceIsTheMACAndFeaturesFollowTheBackend() throws {
        let f = try NetFixture()
        var bytes = [UInt8](repeating: 0xff, count: 8)
        bytes.withUnsafeMutableBytes { f.device.readConfig(offset: 0, into: $0) }
        #expect(bytes == [2, 0, 0, 0, 0, 1, 0, 0])
        var one = [UInt8](repeating: 0xff, count: 1)
        one.withUnsafeMutableBytes { f.device.readConfig(offset: 5, into: $0) }
        #expect(one == [1])
        one.withUnsafeMutableBytes { f.device.readConfig(offset: -3, into: $0) }
        #expect(one == [0])
        let features = f.device.deviceFeatures
        #expect(features & VirtioNet.featureMAC != 0 && features & VirtioNet.featureMrgRxbuf != 0)
        #expect(features & (VirtioNet.featureGuestTSO4 | VirtioNet.featureGuestCsum) == 0, "no offloads without a TAP to set them")
        let withTap = try NetDevice(fd: f.deviceEnd, mac: MACAddress(bytes: [2, 0, 0, 0, 0, 2]), offloads: true) { _ in }
        #expect(withTap.deviceFeatures & VirtioNet.featureGuestTSO4 != 0)
        #expect(withTap.deviceFeatures & VirtioNet.featureHostTSO6 != 0)
    }

    @Test func offloadsFollowTheGuestsFeatures() throws {
        let f = try NetFixture()
        nonisolated(unsafe) var set: [UInt32] = []
        let d = try NetDevice(fd: f.deviceEnd, mac: MACAddress(bytes: [2, 0, 0, 0, 0, 2]), offloads: true) { set.append($0) }
        d.activate(features: VirtioFeature.version1 | VirtioNet.featureGuestCsum | VirtioNet.featureGuestTSO4)
        #expect(set.isEmpty, "no system call on the vCPU thread")
        _ = try d.serveTx(f.txQueue)
        #expect(set == [0x01 | 0x02])
        d.activate(features: VirtioFeature.version1 | VirtioNet.featureGuestTSO4) // TSO without CSUM is meaningless
        _ = try d.serveTx(f.txQueue)
        #expect(set.last == 0)
    }

    @Test func macParsingAndGeneration() throws {
        #expect(try MACAddress(parsing: "02:AB:cd:00:11:ff").bytes == [2, 0xab, 0xcd, 0, 0x11, 0xff])
        #expect(try MACAddress(parsing: "02-00-00-00-00-01").description == "02:00:00:00:00:01")
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "0g:00:00:00:00:01", "2:00:00:00:00:01", "01:00:00:00:00:01"] {
            #expect(throws: NetError.invalidMAC(bad)) { try MACAddress(parsing: bad) }
        }
        let m = MACAddress.generate()
        #expect(m.bytes[0] == 0x02, "locally administered, unicast")
    }

    @Test func addressPlan() {
        let p = NetAddressPlan(block: 0)
        #expect(p.hostString == "172.30.0.1" && p.guestString == "172.30.0.2")
        #expect(p.kernelArgument == "ip=172.30.0.2::172.30.0.1:255.255.255.252::eth0:off")
        #expect(NetAddressPlan(block: 64).hostString == "172.30.1.1")
    }
}
