import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import Testing
import SwiftletTestSupport

/// One split virtqueue as a guest driver keeps it, in shared guest memory:
/// descriptors come from a free list and go back when the device uses the
/// chain; descriptor `d`'s buffer is the fixed slot `dataBase + d * slotSize`,
/// so buffers are reused rather than bump-allocated.
final class FakeQueue {
    static let slotSize = 68 * 1024

    /// The ring layout and its writes, shared with the other virtio tests' driver.
    let ring: TestDriver
    var memory: GuestMemory { ring.memory }
    var size: UInt16 { ring.size }
    var config: VirtqueueConfig { ring.config }
    var availIdx: UInt16 { ring.availIdx }
    let dataBase: UInt64
    private var lastUsed: UInt16 = 0
    private var free: [UInt16]
    /// Head → the chain's descriptors and buffers.
    private var chains: [UInt16: (descriptors: [UInt16], buffers: [Buf])] = [:]

    /// Rings at `base` (descriptors), `base + 0x1000` (available), `base + 0x2000`
    /// (used); buffer slots from `dataBase`.
    init(memory: GuestMemory, base: UInt64, dataBase: UInt64, size: UInt16 = VirtioVsock.queueSize) {
        ring = TestDriver(memory: memory, config: VirtqueueConfig(size: size, descTable: base, availRing: base + 0x1000, usedRing: base + 0x2000))
        self.dataBase = dataBase
        free = Array((0..<size).reversed())
    }

    func virtqueue() throws -> Virtqueue {
        try Virtqueue(memory: memory, config: config, maxSize: VirtioVsock.queueSize, eventIndex: false, indirect: false)
    }

    var freeDescriptors: Int { free.count }
    var outstanding: Int { chains.count }

    /// The buffer slot of descriptor `d`.
    func slot(_ d: UInt16) -> UInt64 { dataBase + UInt64(d) * UInt64(Self.slotSize) }

    /// Posts a chain of buffers with the given lengths and directions, each in
    /// its descriptor's slot; `fill` gives the contents of readable ones.
    /// Returns the head, or nil when descriptors ran out.
    @discardableResult
    func post(_ parts: [(length: Int, writable: Bool, bytes: [UInt8]?)], address: ((Int) -> UInt64?)? = nil) throws -> UInt16? {
        guard parts.count <= free.count else { return nil }
        let ds = (0..<parts.count).map { _ in free.removeLast() }
        var bufs: [Buf] = []
        for (i, p) in parts.enumerated() {
            precondition(p.length <= Self.slotSize)
            let a = address?(i) ?? slot(ds[i])
            if let bytes = p.bytes { try memory.write(bytes, at: a) }
            let last = i == parts.count - 1
            try ring.setDescriptor(Int(ds[i]), address: a, length: UInt32(p.length),
                                   flags: (p.writable ? Flag.write : 0) | (last ? 0 : Flag.next), next: last ? 0 : ds[i + 1])
            bufs.append(Buf(address: a, length: UInt32(p.length), writable: p.writable))
        }
        chains[ds[0]] = (ds, bufs)
        try ring.publish(ds[0])
        return ds[0]
    }

    /// The chains the device used since the last call: their buffers, the
    /// bytes written into their writable part, and the used length.
    func takeUsed() throws -> [(buffers: [Buf], written: [UInt8], length: UInt32)] {
        let usedIdx = try memory.load(UInt16.self, at: config.usedRing + 2)
        var out: [(buffers: [Buf], written: [UInt8], length: UInt32)] = []
        while lastUsed != usedIdx {
            let (id, length) = try ring.used(lastUsed)
            lastUsed &+= 1
            guard let head = UInt16(exactly: id) else {
                Issue.record("device used id \(id), which is no descriptor")
                continue
            }
            guard let chain = chains.removeValue(forKey: head) else {
                Issue.record("device used head \(head), which is not outstanding")
                continue
            }
            free += chain.descriptors
            var written: [UInt8] = []
            var left = Int(length)
            for b in chain.buffers where b.writable && left > 0 {
                let n = min(left, Int(b.length))
                written += try memory.read(at: b.address, count: n)
                left -= n
            }
            if left > 0 { Issue.record("used length \(length) exceeds the chain's writable part") }
            out.append((chain.buffers, written, length))
        }
        return out
    }
}

/// A packet the fake guest received.
struct GuestPacket {
    var header: VsockHeader
    var payload: [UInt8]
    var op: VsockOp? { header.knownOp }
}

/// The guest end of one stream, with Linux's credit rules.
final class GuestSocket {
    let guestPort: UInt32
    let hostPort: UInt32
    /// Our receive buffer, as advertised.
    var bufAlloc: UInt32 = 256 * 1024
    /// Bytes the application consumed (`fwd_cnt`).
    var fwdCnt: UInt32 = 0
    var lastAdvertisedFwdCnt: UInt32 = 0
    /// Whether received data counts as consumed at once.
    var autoConsume = true
    /// The device's credit for us.
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    var txCnt: UInt32 = 0
    var received: [UInt8] = []
    var established = false
    var gotRST = false
    var shutdownFlags: UInt32 = 0
    var creditRequests = 0
    /// Set when the device sent more than our credit allowed.
    var overrun = false

    init(guestPort: UInt32, hostPort: UInt32) {
        self.guestPort = guestPort
        self.hostPort = hostPort
    }

    var peerCredit: Int { max(0, Int(peerBufAlloc) - Int(txCnt &- peerFwdCnt)) }
    var unconsumed: Int { Int(UInt32(truncatingIfNeeded: received.count) &- fwdCnt) }
}

/// Plays a Linux guest against a `VsockMuxer`: the three queues in guest
/// memory, rx buffers kept posted (44-byte header + 4 KiB payload, as Linux
/// 6.1 posts them, or one 4140-byte buffer, as later kernels do), and the
/// guest side of each stream with its credit accounting.
final class FakeGuest {
    enum RxLayout { case split, single }

    let memory: GuestMemory
    let muxer: VsockMuxer
    let cid: UInt32
    let rx: FakeQueue, tx: FakeQueue, event: FakeQueue
    let rxq: Virtqueue, txq: Virtqueue, evq: Virtqueue
    var rxLayout: RxLayout
    /// Keep this many rx buffers posted.
    var rxTarget: Int
    /// Every packet received, in order.
    private(set) var log: [GuestPacket] = []
    /// Packets that matched no guest socket (REQUESTs from the host, RSTs for unknown ports).
    var unmatched: [GuestPacket] = []
    var sockets: [String: GuestSocket] = [:]
    var events: [[UInt8]] = []
    private var nextPort: UInt32 = 49152
    /// Whether the guest answers REQUESTs from the host on these ports with RESPONSE (others get RST).
    var listening: Set<UInt32> = []

    init(muxer: VsockMuxer, cid: UInt32 = 3, rxLayout: RxLayout = .split, rxBuffers: Int = 64) throws {
        memory = try GuestMemory(size: 64 << 20)
        self.muxer = muxer
        self.cid = cid
        self.rxLayout = rxLayout
        rxTarget = rxBuffers
        rx = FakeQueue(memory: memory, base: 0x10000, dataBase: 0x10_0000)
        tx = FakeQueue(memory: memory, base: 0x20000, dataBase: 0x120_0000)
        event = FakeQueue(memory: memory, base: 0x30000, dataBase: 0x230_0000, size: 8)
        rxq = try rx.virtqueue()
        txq = try tx.virtqueue()
        evq = try event.virtqueue()
        try refillRx()
        for _ in 0..<8 { try event.post([(VirtioVsock.eventSize, true, nil)]) }
    }

    static func key(_ guestPort: UInt32, _ hostPort: UInt32) -> String { "\(guestPort):\(hostPort)" }

    func refillRx() throws {
        while rx.outstanding < rxTarget {
            let parts: [(length: Int, writable: Bool, bytes: [UInt8]?)] = rxLayout == .split
                ? [(VirtioVsock.headerSize, true, nil), (4096, true, nil)]
                : [(VirtioVsock.headerSize + 4096, true, nil)]
            guard try rx.post(parts) != nil else { return }
        }
    }

    // MARK: Sending

    /// Posts one packet on tx: header and payload in separate descriptors
    /// (as Linux does) or together. Returns false when tx descriptors ran out.
    @discardableResult
    func send(_ h: VsockHeader, payload: [UInt8] = [], together: Bool = false) throws -> Bool {
        var parts: [(length: Int, writable: Bool, bytes: [UInt8]?)]
        if together || payload.isEmpty {
            let bytes = h.bytes + payload
            parts = [(bytes.count, false, bytes)]
        } else {
            parts = [(VirtioVsock.headerSize, false, h.bytes), (payload.count, false, payload)]
        }
        if tx.freeDescriptors < parts.count { try reclaimTx() }
        return try tx.post(parts) != nil
    }

    /// Posts raw descriptor parts on tx (for malformed packets).
    func sendRaw(_ parts: [(length: Int, writable: Bool, bytes: [UInt8]?)], address: ((Int) -> UInt64?)? = nil) throws {
        try tx.post(parts, address: address)
    }

    func reclaimTx() throws {
        for used in try tx.takeUsed() where used.length != 0 {
            Issue.record("tx chain used with length \(used.length)")
        }
    }

    func header(_ s: GuestSocket, _ op: VsockOp, len: Int = 0, flags: UInt32 = 0) -> VsockHeader {
        VsockHeader(srcCID: UInt64(cid), dstCID: VirtioVsock.hostCID, srcPort: s.guestPort, dstPort: s.hostPort,
                    len: UInt32(len), op: op, flags: flags, bufAlloc: s.bufAlloc, fwdCnt: s.fwdCnt)
    }

    /// connect() to host port `port`: sends REQUEST.
    func connect(to port: UInt32, bufAlloc: UInt32 = 256 * 1024) throws -> GuestSocket {
        nextPort += 1
        let s = GuestSocket(guestPort: nextPort, hostPort: port)
        s.bufAlloc = bufAlloc
        sockets[Self.key(s.guestPort, s.hostPort)] = s
        try send(header(s, .request))
        return s
    }

    /// Sends as much of `bytes` as the device's credit allows, in packets of
    /// at most `chunk` bytes; returns how many went.
    @discardableResult
    func write(_ s: GuestSocket, _ bytes: ArraySlice<UInt8>, chunk: Int = 64 * 1024) throws -> Int {
        var sent = 0
        while sent < bytes.count {
            let n = min(chunk, bytes.count - sent, s.peerCredit, VirtioVsock.maxPayload)
            if n == 0 { break }
            let start = bytes.startIndex + sent
            guard try send(header(s, .rw, len: n), payload: Array(bytes[start..<start + n])) else { break }
            s.txCnt &+= UInt32(n)
            sent += n
        }
        return sent
    }

    func shutdown(_ s: GuestSocket, flags: UInt32) throws { try send(header(s, .shutdown, flags: flags)) }

    /// The application read everything: consume and advertise the credit.
    func consume(_ s: GuestSocket) throws {
        s.fwdCnt = UInt32(truncatingIfNeeded: s.received.count)
        try send(header(s, .creditUpdate))
        s.lastAdvertisedFwdCnt = s.fwdCnt
    }

    // MARK: Running the device

    /// Runs the device as its event loop would (socket events, tx, rx,
    /// event queue) and the guest's receive path, until nothing moves or
    /// `until` holds. Returns the packets received meanwhile.
    @discardableResult
    func pump(rounds: Int = 2000, until: (() -> Bool)? = nil) throws -> [GuestPacket] {
        let start = log.count
        var idle = 0
        for _ in 0..<rounds {
            let before = (log.count, tx.availIdx)
            muxer.process()
            _ = try muxer.serveTx(txq)
            _ = try muxer.serveRx(rxq)
            _ = try muxer.serveEvent(evq)
            try receive()
            try reclaimTx()
            for used in try event.takeUsed() { events.append(used.written) }
            if let until, until() { break }
            if (log.count, tx.availIdx) == before && !isReadable(muxer.pollFD) {
                idle += 1
                if idle >= 2 { break }
            } else {
                idle = 0
            }
        }
        return Array(log[start...])
    }

    /// Takes used rx buffers, reposts them, and plays the guest's side of each packet.
    func receive() throws {
        for used in try rx.takeUsed() {
            guard used.length >= UInt32(VirtioVsock.headerSize), let h = VsockHeader(used.written) else {
                if used.length != 0 { Issue.record("rx packet of \(used.length) bytes") }
                continue
            }
            let payload = Array(used.written[VirtioVsock.headerSize...])
            #expect(payload.count == Int(h.len), "rx used length matches the header's len")
            // An RST answering a packet to another CID comes from that CID.
            #expect(h.dstCID == UInt64(cid) && (h.srcCID == VirtioVsock.hostCID || h.knownOp == .rst),
                    "addresses of a packet from the host")
            #expect(h.type == VsockType.stream)
            let packet = GuestPacket(header: h, payload: payload)
            log.append(packet)
            try handle(packet)
        }
        try refillRx()
    }

    private func handle(_ p: GuestPacket) throws {
        let h = p.header
        guard let s = sockets[Self.key(h.dstPort, h.srcPort)] else {
            unmatched.append(p)
            if h.knownOp == .request {
                let s = GuestSocket(guestPort: h.dstPort, hostPort: h.srcPort)
                s.peerBufAlloc = h.bufAlloc
                s.peerFwdCnt = h.fwdCnt
                if listening.contains(h.dstPort) {
                    s.established = true
                    sockets[Self.key(s.guestPort, s.hostPort)] = s
                    try send(header(s, .response))
                } else {
                    try send(header(s, .rst))
                }
            }
            return
        }
        s.peerBufAlloc = h.bufAlloc
        s.peerFwdCnt = h.fwdCnt
        switch h.knownOp {
        case .response?: s.established = true
        case .rst?: s.gotRST = true
        case .shutdown?: s.shutdownFlags |= h.flags
        case .creditRequest?:
            s.creditRequests += 1
            try send(header(s, .creditUpdate))
        case .rw?:
            s.received += p.payload
            if s.unconsumed > Int(s.bufAlloc) { s.overrun = true }
            if s.autoConsume {
                s.fwdCnt = UInt32(truncatingIfNeeded: s.received.count)
                // Linux: a credit update once the peer's view of our free space is low.
                if s.fwdCnt &- s.lastAdvertisedFwdCnt >= s.bufAlloc / 2 {
                    try send(header(s, .creditUpdate))
                    s.lastAdvertisedFwdCnt = s.fwdCnt
                }
            }
        default: break
        }
    }

    func socket(_ guestPort: UInt32, _ hostPort: UInt32) -> GuestSocket? { sockets[Self.key(guestPort, hostPort)] }
}

// MARK: - Host side helpers

/// Whether `fd` is readable now.
func isReadable(_ fd: Int32) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, 0) > 0 && p.revents != 0
}

/// A temporary directory for socket files, removed (with its files) when dropped.
final class TempSocketDir {
    let path: String
    init() throws {
        var template = Array("/tmp/swiftlet-vsock-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else { throw TestFailure("mkdtemp") }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    var uds: String { path + "/v.sock" }
    deinit { removeTree(path) }
}

/// A host-side socket end, non-blocking, closed when dropped.
final class HostEnd {
    private(set) var fd: Int32
    var received: [UInt8] = []
    var eof = false

    init(_ fd: consuming OwnedFD) { self.fd = fd.release() }
    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// A client of the device's listener at `path`.
    static func connect(_ path: String) throws -> HostEnd { HostEnd(try UnixSocket.connect(to: path)) }

    /// Writes what the socket takes now; returns the count.
    @discardableResult
    func write(_ bytes: ArraySlice<UInt8>) -> Int {
        guard !bytes.isEmpty else { return 0 }
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        return max(0, n)
    }

    func write(_ text: String) { _ = write(Array(text.utf8)[...]) }

    /// Reads what is there (into `received`); notes EOF.
    @discardableResult
    func drain() -> Int {
        var total = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                received += buf[0..<n]
                total += n
                continue
            }
            if n == 0 { eof = true }
            if n < 0 && errno != EAGAIN && errno != EINTR { eof = true }
            return total
        }
    }

    /// Whether the peer closed (EOF, or a reset).
    var closedByPeer: Bool {
        drain()
        return eof
    }

    func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }
}

/// A listener for guest-initiated connections at `<uds>_<port>`.
final class HostListener {
    let fd: Int32
    let path: String
    init(_ path: String) throws {
        self.path = path
        fd = try UnixSocket.listen(at: path, backlog: 128).release()
    }
    deinit {
        Glibc.close(fd)
        unlink(path)
    }
    func accept() throws -> HostEnd? {
        let accepted = try UnixSocket.accept(fd)
        switch consume accepted {
        case .some(let socket): return HostEnd(socket)
        case .none: return nil
        }
    }
}

/// Deterministic pseudo-random bytes.
struct TestRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return state >> 11
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
    mutating func int(_ range: ClosedRange<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
}
