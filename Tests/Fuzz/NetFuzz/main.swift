// libFuzzer harness for the virtio-net device (NetDevice), driven as a hostile
// guest would, with the TAP played by one end of a SOCK_SEQPACKET pair (which
// keeps message boundaries as a TAP does; the harness holds the other end).
//
// Input: a sequence of records, each [kind u8][arg u8][len u16 LE][len bytes]:
//   kind % 8 == 0  driver (re)start: device reset, then from the bytes
//                  [features: bit 0 MRG_RXBUF, bit 1 EVENT_IDX, bit 2 INDIRECT_DESC]
//                  [rx size log2][tx size log2][start index u16] (missing bytes: defaults)
//   kind % 8 == 1  rx chains: per descriptor 2 bytes [length / 16 - 1][flags: bit 0
//                  device-readable, bit 1 empty, bit 2 outside guest memory, bit 3 the
//                  first byte is the length in bytes];
//                  arg bit 7 puts them in an indirect table; 1 + arg % 16 such chains
//   kind % 8 == 2  re-posts an rx head the device has not given back (arg picks it)
//   kind % 8 == 3  the TAP side sends a frame: the bytes, then arg * 256 bytes of pattern
//   kind % 8 == 4  a tx chain: bytes[0] is its shape (bits 0-1 descriptors - 1, bit 2
//                  indirect, bit 3 a writable descriptor at the end, bit 4 one outside
//                  guest memory, bit 5 an empty one); the rest, then arg * 256 bytes of
//                  pattern, is the frame with its header
//   kind % 8 == 5  notification fields: avail flags and used_event of both queues
//                  (u16 each, from the bytes), and a config space read at offset arg - 128
//   kind % 8 == 6  chaos: the bytes (after a u16 offset / 4) overwrite the rings and
//                  indirect tables; from then on only the device's own promises are checked
//   kind % 8 == 7  arg % 4: 0 the TAP's peer shuts down its sending side (EOF),
//                  1 / 2 the rx / tx available index jumps, 3 device reset without restart
// After each record the device serves tx, then rx, as its event loop would (not
// after a reset until the driver restarts it, nor after an error: NEEDS_RESET).
// Checks after each service: every used length within the chain's writable buffers;
// frames as num_buffers says (consecutive entries, each but the last filled, the
// sum the frame's length, 1 without MRG_RXBUF), byte-exact and in order (except
// frames the device counted as dropped); tx frames byte-exact, in order, the well-
// formed ones all sent, nothing written back; fewer held chains than the queue size,
// none without a pending frame; a pending frame only while the ring is empty; the
// TAP watched exactly while no frame waits. AddressSanitizer catches any access
// outside memory. Build and run with `FUZZ_TARGET=net Tests/Fuzz/run.sh`.
import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio

/// Guest memory: [0, 8 MiB) and [9 MiB, 10 MiB), with a hole between.
let memory = try! GuestMemory(ranges: [(base: 0, size: 0x80_0000), (base: 0x90_0000, size: 0x10_0000)])

enum Layout {
    static let rx = VirtqueueConfig(size: 0, descTable: 0x0, availRing: 0x1000, usedRing: 0x2000)
    static let tx = VirtqueueConfig(size: 0, descTable: 0x3000, availRing: 0x4000, usedRing: 0x5000)
    /// Indirect tables: head h's at + 0x100 * h (16 entries).
    static let rxIndirect: UInt64 = 0x10000
    static let txIndirect: UInt64 = 0x20000
    /// Rings and indirect tables end here (cleared for each input).
    static let ringsEnd = 0x30000
    /// rx descriptor d's buffer: + 0x1000 * d; indirect entry j of head h: + 0x400 * (16 * h + j).
    static let rxData: UInt64 = 0x10_0000
    static let rxIndirectData: UInt64 = 0x20_0000
    /// tx frames, bump-allocated from here again after each service.
    static let txData: UInt64 = 0x60_0000
    static let txDataEnd: UInt64 = 0x80_0000
    /// An address where a non-empty buffer of `length` bytes is outside guest
    /// memory: across the end of the first region, or in the hole.
    static func outside(_ length: Int) -> UInt64 { length > 0x80 ? 0x7f_ff80 : 0x80_0000 }
}

/// Where the TAP's peer receives tx frames.
nonisolated(unsafe) let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioNet.maxFrame + 64, alignment: 16)
/// Frame filler: byte k is k mod 256 (a slice of it instead of a per-byte loop,
/// which the coverage instrumentation makes slow).
let patternTable = (0..<(VirtioNet.maxFrame + 512)).map { UInt8(truncatingIfNeeded: $0) }
/// Byte equality with memcmp, for the same reason.
func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && (a.isEmpty || a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 } })
}
let mac = MACAddress(bytes: [2, 0, 0, 0, 0, 0x4e])
let maxFrame = VirtioNet.maxFrame
let headerSize = VirtioNet.headerSize

struct Buffer { var address: UInt64; var length: Int; var writable: Bool }

/// A chain the driver posted and has not had back.
struct Chain {
    var descriptors: [UInt16]
    var buffers: [Buffer]
    /// Times published and not yet returned (more than 1: a hostile re-post).
    var outstanding = 1
    var writableLength: Int { buffers.reduce(0) { $0 + ($1.writable ? $1.length : 0) } }

    /// The first `count` bytes of the writable part, as the driver reads them.
    func written(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        for b in buffers where b.writable && b.length > 0 && out.count < count {
            let n = min(b.length, count - out.count)
            guard let bytes = try? memory.read(at: b.address, count: n) else {
                preconditionFailure("the device used a chain with a buffer outside guest memory")
            }
            out += bytes
        }
        precondition(out.count == count, "used length past the writable buffers")
        return out
    }
}

/// One virtqueue as the driver sees it.
struct DriverQueue {
    let config: VirtqueueConfig
    let queue: Virtqueue
    let indirectBase: UInt64
    var free: [UInt16]
    var chains: [UInt16: Chain] = [:]
    var availIdx: UInt16
    var seenUsed: UInt16
    let start: UInt16
    /// Available entries the device consumed without a head to give back (an error).
    var headless: UInt16 = 0

    init(_ layout: VirtqueueConfig, size: UInt16, start: UInt16, eventIndex: Bool, indirect: Bool, indirectBase: UInt64) {
        config = VirtqueueConfig(size: size, descTable: layout.descTable, availRing: layout.availRing, usedRing: layout.usedRing)
        try! memory.store(start, at: config.availRing + 2)
        try! memory.store(start, at: config.usedRing + 2)
        queue = try! Virtqueue(memory: memory, config: config, maxSize: VirtioNet.queueSize, eventIndex: eventIndex,
                               indirect: indirect, nextAvail: start, nextUsed: start)
        self.indirectBase = indirectBase
        free = (0..<size).reversed().map { $0 }
        availIdx = start
        seenUsed = start
        self.start = start
    }

    func descriptor(_ table: UInt64, _ i: Int, _ address: UInt64, _ length: Int, _ flags: UInt16, next: Int) {
        let d = table + 16 * UInt64(i)
        try! memory.store(address, at: d)
        try! memory.store(UInt32(truncatingIfNeeded: length), at: d + 8)
        try! memory.store(flags, at: d + 12)
        try! memory.store(UInt16(truncatingIfNeeded: next), at: d + 14)
    }

    /// Lays out a chain of `buffers` (direct, or in head's indirect table) and
    /// returns its head, or nil when the driver has too few free descriptors.
    mutating func post(_ buffers: [Buffer], indirect: Bool) -> UInt16? {
        let count = indirect ? 1 : buffers.count
        guard count > 0, free.count >= count else { return nil }
        let ids = (0..<count).map { _ in free.removeLast() }
        func flags(_ b: Buffer, last: Bool) -> UInt16 { (b.writable ? 2 : 0) | (last ? 0 : 1) }
        if indirect {
            let table = indirectBase + 0x100 * UInt64(ids[0])
            for (j, b) in buffers.enumerated() {
                descriptor(table, j, b.address, b.length, flags(b, last: j == buffers.count - 1), next: j + 1)
            }
            descriptor(config.descTable, Int(ids[0]), table, 16 * buffers.count, 4, next: 0)
        } else {
            for (j, b) in buffers.enumerated() {
                let last = j == buffers.count - 1
                descriptor(config.descTable, Int(ids[j]), b.address, b.length, flags(b, last: last), next: last ? 0 : Int(ids[j + 1]))
            }
        }
        chains[ids[0]] = Chain(descriptors: ids, buffers: buffers)
        publish(ids[0])
        return ids[0]
    }

    mutating func publish(_ head: UInt16) {
        try! memory.store(head, at: config.availRing + 4 + 2 * UInt64(availIdx % config.size))
        availIdx &+= 1
        try! memory.store(availIdx, at: config.availRing + 2)
    }

    /// Used entries the device pushed since the last call; nil when there were
    /// more than the ring holds, so that the later overwrote the earlier. (A
    /// driver that re-posts heads has more than `size` chains out and can get
    /// that many back in one service: its own loss, not the device's fault.)
    mutating func takeUsed() -> [(head: UInt16, length: Int)]? {
        if queue.nextUsed &- seenUsed > config.size {
            seenUsed = queue.nextUsed
            return nil
        }
        var out: [(UInt16, Int)] = []
        while seenUsed != queue.nextUsed {
            let e = config.usedRing + 4 + 8 * UInt64(seenUsed % config.size)
            let head = try! memory.load(UInt32.self, at: e)
            precondition(head < UInt32(config.size), "used head \(head) past the queue size")
            out.append((UInt16(head), Int(try! memory.load(UInt32.self, at: e + 4))))
            seenUsed &+= 1
        }
        return out
    }

    /// The driver has `head` back.
    mutating func returned(_ head: UInt16) {
        guard var c = chains[head] else { return }
        c.outstanding -= 1
        if c.outstanding > 0 { chains[head] = c; return }
        chains[head] = nil
        free += c.descriptors
    }

    /// Chains the device took and has not given back.
    var held: Int { Int(queue.nextAvail &- queue.nextUsed &- headless) }

    /// The device gave up on the queue (the transport then sets NEEDS_RESET):
    /// only for a guest that broke the queue's rules.
    mutating func failed(_ error: VirtqueueError, chaos: Bool) {
        if case .malformedChain(head: nil, _) = error { headless &+= 1 }
        if chaos { return }
        let published = try! memory.load(UInt16.self, at: config.availRing + 2)
        if case .availIndexJump = error, published &- queue.nextAvail > config.size { return }
        preconditionFailure("the device failed with '\(error)' though the guest kept the queue's rules")
    }
}

/// What a tx frame posted must do.
enum Expect { case sent, notSent, either }

/// One input's machine: the device, the TAP's peer and the driver.
struct Harness {
    var device: NetDevice
    let deviceEnd: Int32, peer: Int32
    var rx: DriverQueue, tx: DriverQueue
    var mergeable = true
    var live = true, broken = false, chaos = false, peerShut = false
    /// Frames the TAP side sent that the guest has not received, in order (as the device reads them).
    var expectedRx: [[UInt8]] = []
    var rxDropsSeen = 0
    /// tx frames posted since the last service.
    var postedTx: [(frame: [UInt8], expect: Expect)] = []
    var txCursor = Layout.txData
    var pattern: UInt8 = 0

    init() {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        deviceEnd = fds[0]
        peer = fds[1]
        var big: Int32 = 4 << 20
        setsockopt(peer, SOL_SOCKET, SO_SNDBUF, &big, 4)
        setsockopt(deviceEnd, SOL_SOCKET, SO_SNDBUF, &big, 4)
        device = try! NetDevice(fd: deviceEnd, mac: mac, offloads: false, setOffloads: nil)
        (rx, tx) = Self.queues(size: 16, txSize: 16, start: 0, eventIndex: false, indirect: false)
        device.activate(features: VirtioFeature.version1 | VirtioNet.featureMrgRxbuf)
    }

    static func queues(size: UInt16, txSize: UInt16, start: UInt16, eventIndex: Bool, indirect: Bool) -> (DriverQueue, DriverQueue) {
        memory.regions[0].host.initializeMemory(as: UInt8.self, repeating: 0, count: Layout.ringsEnd)
        return (DriverQueue(Layout.rx, size: size, start: start, eventIndex: eventIndex, indirect: indirect, indirectBase: Layout.rxIndirect),
                DriverQueue(Layout.tx, size: txSize, start: start, eventIndex: eventIndex, indirect: indirect, indirectBase: Layout.txIndirect))
    }

    func close() {
        Glibc.close(deviceEnd)
        Glibc.close(peer)
    }

    /// The device forgets its pending frame on reset: it was the oldest one not received.
    mutating func reset() {
        if device.pendingLength > 0 && !chaos {
            precondition(expectedRx.first?.count == device.pendingLength, "the pending frame is not the oldest one sent")
            expectedRx.removeFirst()
        }
        device.reset()
    }

    mutating func restart(_ b: UnsafeRawBufferPointer) {
        reset()
        if chaos {
            // Back in step with the TAP side: what it sent so far is gone.
            while recv(deviceEnd, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT)) > 0 {}
            expectedRx = []
            rxDropsSeen = device.rxDroppedFrames
        }
        let features = b.count > 0 ? b[0] : 1
        let size = UInt16(1) << ((b.count > 1 ? b[1] : 4) % 9)
        let txSize = UInt16(1) << ((b.count > 2 ? b[2] : 4) % 9)
        let start = b.count > 4 ? UInt16(b[3]) | UInt16(b[4]) << 8 : 0
        (rx, tx) = Self.queues(size: size, txSize: txSize, start: start, eventIndex: features & 2 != 0, indirect: features & 4 != 0)
        mergeable = features & 1 != 0
        device.activate(features: VirtioFeature.version1 | (mergeable ? VirtioNet.featureMrgRxbuf : 0)
                        | (features & 2 != 0 ? VirtioFeature.ringEventIdx : 0) | (features & 4 != 0 ? VirtioFeature.ringIndirectDesc : 0))
        live = true
        broken = false
        chaos = false
        postedTx = []
    }

    mutating func postRx(_ arg: UInt8, _ b: UnsafeRawBufferPointer) {
        let indirect = arg & 0x80 != 0
        let shapes = stride(from: 0, to: b.count - 1, by: 2).prefix(16).map { (b[$0], b[$0 + 1]) }
        guard !shapes.isEmpty else { return }
        for _ in 0...(arg & 15) {
            // Buffers are placed once the descriptors are known: direct ones by descriptor, indirect ones by head.
            guard let next = rx.free.last else { return }
            let ids = indirect ? [next] : Array(rx.free.suffix(shapes.count).reversed())
            guard ids.count == (indirect ? 1 : shapes.count) else { return }
            var buffers: [Buffer] = []
            for (j, (lengthByte, flags)) in shapes.enumerated() {
                let length = flags & 2 != 0 ? 0 : flags & 8 != 0 ? Int(lengthByte)
                    : indirect ? (Int(lengthByte) % 64 + 1) * 16 : (Int(lengthByte) + 1) * 16
                let address = flags & 4 != 0 ? Layout.outside(length)
                    : indirect ? Layout.rxIndirectData + 0x400 * (16 * UInt64(ids[0]) + UInt64(j))
                    : Layout.rxData + 0x1000 * UInt64(ids[j])
                buffers.append(Buffer(address: address, length: length, writable: flags & 1 == 0))
            }
            guard rx.post(buffers, indirect: indirect) != nil else { return }
        }
    }

    /// A hostile driver publishes a head the device still has.
    mutating func repost(_ arg: UInt8) {
        let heads = rx.chains.keys.sorted()
        guard !heads.isEmpty else { return }
        let head = heads[Int(arg) % heads.count]
        rx.chains[head]!.outstanding += 1
        rx.publish(head)
    }

    mutating func frame(_ prefix: UnsafeRawBufferPointer, extra: Int) -> [UInt8] {
        pattern &+= 1
        let start = Int(pattern), n = min(extra, patternTable.count - start)
        return Array(prefix) + patternTable[start..<(start + n)]
    }

    mutating func tapSends(_ arg: UInt8, _ b: UnsafeRawBufferPointer) {
        let f = frame(b, extra: 256 * Int(arg))
        // An empty message would read as end of file, which a TAP never gives.
        guard !f.isEmpty, !peerShut else { return }
        let n = f.withUnsafeBytes { send(peer, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) }
        guard n == f.count else { return }
        // Shorter than the header: not a frame (skipped). Longer than any TAP
        // frame: the read takes what fits and the socket drops the rest.
        if f.count >= headerSize { expectedRx.append(Array(f.prefix(maxFrame))) }
    }

    mutating func postTx(_ arg: UInt8, _ b: UnsafeRawBufferPointer) {
        guard b.count > 0 else { return }
        let shape = b[0]
        let f = frame(UnsafeRawBufferPointer(rebasing: b[1...]), extra: 256 * Int(arg))
        guard txCursor + UInt64(f.count) <= Layout.txDataEnd else { return }
        let base = txCursor
        try! memory.write(f, at: base)
        txCursor = (txCursor + UInt64(f.count) + 15) & ~15
        let pieces = Int(shape & 3) + 1
        var buffers: [Buffer] = []
        var at = 0
        for i in 0..<pieces {
            let end = i == pieces - 1 ? f.count : f.count * (i + 1) / pieces
            buffers.append(Buffer(address: base + UInt64(at), length: end - at, writable: false))
            at = end
        }
        if shape & 0x20 != 0 { buffers.insert(Buffer(address: 0, length: 0, writable: false), at: buffers.count / 2) }
        if shape & 0x10 != 0 { buffers[buffers.count - 1].address = Layout.outside(buffers[buffers.count - 1].length) }
        if shape & 0x08 != 0 { buffers.append(Buffer(address: Layout.rxData, length: 64, writable: true)) }
        let indirect = shape & 0x04 != 0
        guard tx.post(buffers, indirect: indirect) != nil else { return }
        let outside = shape & 0x10 != 0 && buffers[buffers.count - (shape & 0x08 != 0 ? 2 : 1)].length > 0
        let wellFormed = !outside && (!indirect || tx.queue.indirect)
        let expect: Expect = !wellFormed ? .either : (f.count >= headerSize && f.count <= maxFrame ? .sent : .notSent)
        postedTx.append((f, expect))
    }

    mutating func notification(_ arg: UInt8, _ b: UnsafeRawBufferPointer) {
        func u16(_ i: Int) -> UInt16 { b.count > i + 1 ? UInt16(b[i]) | UInt16(b[i + 1]) << 8 : 0 }
        for (i, q) in [rx, tx].enumerated() {
            try! memory.store(u16(4 * i), at: q.config.availRing)
            try! memory.store(u16(4 * i + 2), at: q.config.availRing + 4 + 2 * UInt64(q.config.size))
        }
        var config = [UInt8](repeating: 0xff, count: 8)
        let offset = Int(arg) - 128
        config.withUnsafeMutableBytes { device.readConfig(offset: offset, into: $0) }
        for (i, byte) in config.enumerated() {
            let o = offset + i
            precondition(byte == (o >= 0 && o < 6 ? mac.bytes[o] : 0), "config space byte \(o)")
        }
    }

    mutating func chaos(_ b: UnsafeRawBufferPointer) {
        guard b.count > 2 else { return }
        let offset = (Int(b[0]) | Int(b[1]) << 8) * 4
        let n = min(b.count - 2, Layout.ringsEnd - offset)
        guard n > 0 else { return }
        try! memory.write(UnsafeRawBufferPointer(rebasing: b[2..<(2 + n)]), at: UInt64(offset))
        chaos = true
    }

    mutating func special(_ arg: UInt8) {
        switch arg % 4 {
        case 0:
            shutdown(peer, Int32(SHUT_WR))
            peerShut = true
        case 1, 2:
            // More than a queue size ahead: the queue is unusable until the driver resets it.
            let q = arg % 4 == 1 ? rx : tx
            let idx = q.queue.nextAvail &+ q.config.size &+ 1 &+ UInt16(arg >> 4)
            try! memory.store(idx, at: q.config.availRing + 2)
        default:
            reset()
            live = false
        }
    }

    /// The event loop's turn: tx, then rx; then every check.
    mutating func run() {
        guard live else {
            device.pause() // the loop found the TAP readable while the device is not live
            return
        }
        if !broken {
            do { _ = try device.serveTx(tx.queue) } catch { tx.failed(error, chaos: chaos); broken = true }
        }
        let txThrew = broken
        if !broken {
            do { _ = try device.serveRx(rx.queue) } catch { rx.failed(error, chaos: chaos); broken = true }
            if !broken {
                precondition(device.isWatching == (device.pendingLength == 0 && !device.isDead),
                             "the TAP must be watched exactly while no frame waits")
            }
        }
        checkTx(threw: txThrew)
        checkRx()
        txCursor = Layout.txData
    }

    mutating func checkTx(threw: Bool) {
        guard let used = tx.takeUsed() else { preconditionFailure("more tx entries used than the driver had out") }
        for e in used {
            precondition(e.length == 0, "tx used length \(e.length): the device writes nothing into tx chains")
            if !chaos {
                precondition(tx.chains[e.head] != nil, "tx head \(e.head) was never posted")
                tx.returned(e.head)
            }
        }
        var sent: [[UInt8]] = []
        while true {
            let n = recv(peer, scratch.baseAddress, scratch.count, Int32(MSG_DONTWAIT))
            if n < 0 { break }
            precondition(n >= headerSize && n <= maxFrame, "a tx frame of \(n) bytes reached the TAP")
            sent.append(Array(scratch[0..<n]))
        }
        if chaos { postedTx = []; return }
        var i = 0
        for s in sent {
            while i < postedTx.count && !same(postedTx[i].frame, s) {
                precondition(postedTx[i].expect != .sent || threw, "a well-formed tx frame of \(postedTx[i].frame.count) bytes was not sent")
                i += 1
            }
            precondition(i < postedTx.count, "a tx frame the guest did not post (or not in order)")
            precondition(postedTx[i].expect != .notSent, "a tx frame of \(s.count) bytes should have been refused")
            i += 1
        }
        for p in postedTx[i...] { precondition(p.expect != .sent || threw, "a well-formed tx frame of \(p.frame.count) bytes was not sent") }
        postedTx = []
    }

    mutating func checkRx() {
        let taken = rx.takeUsed()
        if taken == nil { chaos = true } // what the guest lost cannot be checked
        let entries = taken ?? []
        let size = Int(rx.config.size)
        let held = rx.held
        precondition(held >= 0 && held < size, "\(held) rx chains held with a queue of \(size)")
        precondition(device.pendingLength <= maxFrame, "a pending frame of \(device.pendingLength) bytes")
        precondition(device.pendingLength > 0 || held == 0, "rx chains held without a pending frame")
        if chaos {
            for e in entries { precondition(e.length <= maxFrame, "rx used length \(e.length)") }
            return
        }
        var uses: [UInt16: Int] = [:]
        var written: Set<UInt16> = []
        for e in entries {
            guard let c = rx.chains[e.head] else { preconditionFailure("rx head \(e.head) was never posted") }
            uses[e.head, default: 0] += 1
            precondition(uses[e.head]! <= c.outstanding, "rx head \(e.head) given back more often than posted")
            precondition(e.length <= c.writableLength, "rx used length \(e.length) past the \(c.writableLength) writable bytes")
            // A head the guest re-posted and the device filled twice in one service:
            // the later frame overwrote the earlier, so the bytes prove nothing any more.
            if e.length > 0 && !written.insert(e.head).inserted { chaos = true }
        }
        if chaos {
            for e in entries { rx.returned(e.head) }
            return
        }
        var drops = device.rxDroppedFrames - rxDropsSeen
        rxDropsSeen = device.rxDroppedFrames
        var i = 0
        while i < entries.count {
            let first = entries[i]
            if first.length == 0 { i += 1; continue }
            precondition(first.length >= headerSize, "a frame's first buffer of \(first.length) bytes cannot hold the header")
            let header = rx.chains[first.head]!.written(headerSize)
            let count = Int(header[10]) | Int(header[11]) << 8
            precondition(count >= 1 && count <= entries.count - i, "num_buffers \(count) with \(entries.count - i) used entries left")
            precondition(mergeable || count == 1, "num_buffers \(count) without MRG_RXBUF")
            var total = 0
            for k in i..<(i + count) {
                let e = entries[k]
                precondition(e.length > 0, "an empty used entry inside a frame of \(count) buffers")
                if k < i + count - 1 {
                    precondition(e.length == rx.chains[e.head]!.writableLength, "a frame's buffer left part empty before the next")
                }
                total += e.length
            }
            var got: [UInt8] = []
            for k in i..<(i + count) { got += rx.chains[entries[k].head]!.written(entries[k].length) }
            // The oldest frame sent, unless the device dropped (and counted) some before it.
            while true {
                precondition(!expectedRx.isEmpty, "a frame the TAP never sent")
                var want = expectedRx.removeFirst()
                if want.count == total {
                    want[10] = UInt8(truncatingIfNeeded: count)
                    want[11] = UInt8(truncatingIfNeeded: count >> 8)
                    if same(got, want) { break }
                }
                precondition(drops > 0, "frame of \(total) bytes delivered out of order, altered, or after an uncounted drop")
                drops -= 1
            }
            i += count
        }
        expectedRx.removeFirst(min(drops, expectedRx.count))
        if device.pendingLength > 0 {
            precondition(expectedRx.first?.count == device.pendingLength, "the pending frame is not the oldest one sent")
            if !broken {
                precondition(rx.queue.nextAvail == rx.availIdx, "a frame waits while the guest has posted buffers")
            }
        }
        for e in entries { rx.returned(e.head) }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    var h = Harness()
    defer { h.close() }
    let input = UnsafeRawBufferPointer(start: data, count: count)
    var at = 0
    var records = 0
    while at + 4 <= count && records < 256 {
        let kind = input[at], arg = input[at + 1]
        let length = min(Int(input[at + 2]) | Int(input[at + 3]) << 8, count - at - 4)
        let bytes = UnsafeRawBufferPointer(rebasing: input[(at + 4)..<(at + 4 + length)])
        at += 4 + length
        records += 1
        switch kind % 8 {
        case 0: h.restart(bytes)
        case 1: h.postRx(arg, bytes)
        case 2: h.repost(arg)
        case 3: h.tapSends(arg, bytes)
        case 4: h.postTx(arg, bytes)
        case 5: h.notification(arg, bytes)
        case 6: h.chaos(bytes)
        default: h.special(arg)
        }
        h.run()
    }
    return 0
}
