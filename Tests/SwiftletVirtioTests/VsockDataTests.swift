import Glibc
import SwiftletSys
import SwiftletVirtio
import Testing

/// Moves `toHost` from the guest socket to the host end and `toGuest` the
/// other way, in randomly sized writes, until both arrived (or a round limit).
func exchange(_ f: VsockFixture, _ pairs: [(guest: GuestSocket, host: HostEnd, toHost: [UInt8], toGuest: [UInt8])],
              seed: UInt64, maxRounds: Int = 200_000) throws {
    var rng = TestRandom(state: seed)
    var sentToHost = [Int](repeating: 0, count: pairs.count)
    var sentToGuest = [Int](repeating: 0, count: pairs.count)
    for _ in 0..<maxRounds {
        var done = true
        for (i, p) in pairs.enumerated() {
            if sentToHost[i] < p.toHost.count {
                let end = min(p.toHost.count, sentToHost[i] + rng.int(1...100_000))
                sentToHost[i] += try f.guest.write(p.guest, p.toHost[sentToHost[i]..<end], chunk: rng.int(1...65536))
            }
            if sentToGuest[i] < p.toGuest.count {
                let end = min(p.toGuest.count, sentToGuest[i] + rng.int(1...100_000))
                sentToGuest[i] += p.host.write(p.toGuest[sentToGuest[i]..<end])
            }
            if p.host.received.count < p.toHost.count || p.guest.received.count < p.toGuest.count { done = false }
        }
        if done { break }
        try f.guest.pump(rounds: 8)
        for p in pairs { p.host.drain() }
    }
    for p in pairs {
        #expect(p.host.received.count == p.toHost.count)
        #expect(p.host.received == p.toHost, "guest to host bytes")
        #expect(p.guest.received.count == p.toGuest.count)
        #expect(p.guest.received == p.toGuest, "host to guest bytes")
        #expect(!p.guest.overrun, "the device stayed within the guest's credit")
        #expect(!p.guest.gotRST)
    }
}

@Suite("Vsock data transfer")
struct VsockDataTests {
    @Test(arguments: [FakeGuest.RxLayout.split, .single])
    func severalMiBBothWaysGuestInitiated(_ layout: FakeGuest.RxLayout) throws {
        let f = try VsockFixture(rxLayout: layout, rxBuffers: 128)
        let listener = try f.listen(5001)
        let (s, h) = try f.guestConnect(listener, port: 5001)
        var rng = TestRandom(state: 17)
        try exchange(f, [(s, h, rng.bytes(3 << 20), rng.bytes(3 << 20))], seed: 1)
        #expect(f.muxer.statistics.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize))
    }

    @Test func severalMiBBothWaysHostInitiated() throws {
        let f = try VsockFixture(rxBuffers: 128)
        let (h, s, _) = try f.hostConnect(port: 80)
        var rng = TestRandom(state: 99)
        try exchange(f, [(s, h, rng.bytes(2 << 20), rng.bytes(2 << 20))], seed: 2)
    }

    @Test func fiftyConcurrentConnectionsEachWay() throws {
        let f = try VsockFixture(rxBuffers: 200)
        var rng = TestRandom(state: 5)
        var pairs: [(guest: GuestSocket, host: HostEnd, toHost: [UInt8], toGuest: [UInt8])] = []
        var listeners: [HostListener] = []
        for i in 0..<30 {
            let port = UInt32(6000 + i)
            let listener = try f.listen(port)
            listeners.append(listener)
            let (s, h) = try f.guestConnect(listener, port: port)
            pairs.append((s, h, rng.bytes(rng.int(1...150_000)), rng.bytes(rng.int(1...150_000))))
        }
        for _ in 0..<30 {
            let (h, s, _) = try f.hostConnect(port: 22)
            pairs.append((s, h, rng.bytes(rng.int(1...150_000)), rng.bytes(rng.int(1...150_000))))
        }
        #expect(f.muxer.statistics.connections == 60)
        try exchange(f, pairs, seed: 3)
        // Closing every host end ends every connection.
        for p in pairs { p.host.close() }
        try f.guest.pump()
        #expect(f.muxer.statistics.connections == 0)
        #expect(pairs.allSatisfy { $0.guest.gotRST })
    }
}

@Suite("Vsock credit and bounded buffering")
struct VsockCreditTests {
    @Test func hostThatDoesNotReadStopsTheGuestAtBufAlloc() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5002)
        let (s, h) = try f.guestConnect(listener, port: 5002)
        var rng = TestRandom(state: 8)
        let data = rng.bytes(8 << 20)
        var sent = 0
        for _ in 0..<10_000 {
            let n = try f.guest.write(s, data[sent...])
            sent += n
            try f.guest.pump()
            if n == 0 { break }
        }
        // The socket is full and the device holds at most buf_alloc more.
        #expect(s.peerCredit == 0)
        #expect(sent < data.count)
        let stats = f.muxer.statistics
        #expect(stats.maxBufferedGuestBytes > 0)
        #expect(stats.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize))
        #expect(!isReadable(f.muxer.pollFD), "nothing to do until the host reads")

        // The host reads: credit updates come back and the rest flows.
        for _ in 0..<100_000 where h.received.count < data.count {
            h.drain()
            try f.guest.pump(rounds: 4)
            sent += try f.guest.write(s, data[sent...])
            #expect(f.muxer.statistics.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize))
        }
        #expect(h.received == data)
        #expect(!s.gotRST)
    }

    @Test func guestIgnoringCreditIsReset() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5003)
        let (s, h) = try f.guestConnect(listener, port: 5003)
        let chunk = [UInt8](repeating: 0xab, count: 65536)
        for _ in 0..<200 where !s.gotRST {
            // Straight onto the ring, whatever the credit says.
            try f.guest.send(f.guest.header(s, .rw, len: chunk.count), payload: chunk)
            s.txCnt &+= UInt32(chunk.count)
            try f.guest.pump(rounds: 4)
            #expect(f.muxer.statistics.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize))
        }
        #expect(s.gotRST)
        #expect(h.closedByPeer)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestWithoutCreditStopsTheSocketReads() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5004)
        let (s, h) = try f.guestConnect(listener, port: 5004, bufAlloc: 8192)
        s.autoConsume = false
        var rng = TestRandom(state: 4)
        let data = rng.bytes(1 << 20)
        var written = h.write(data[...])
        #expect(written > 8192)
        try f.guest.pump()
        #expect(s.received == Array(data[0..<8192]))
        #expect(!s.overrun)
        #expect(s.creditRequests == 1, "one CREDIT_REQUEST per stall")
        // Bounded: the device reads no further, holds nothing, and its fd is quiet (no busy loop).
        #expect(!isReadable(f.muxer.pollFD))
        let stats = f.muxer.statistics
        #expect(stats.readyToRead == 0)
        #expect(stats.queuedPackets == 0)
        let quiet = try f.guest.pump()
        #expect(quiet.isEmpty)

        // Credit returns: the next 8 KiB.
        try f.guest.consume(s)
        try f.guest.pump()
        #expect(s.received == Array(data[0..<16384]))
        // Then everything.
        s.autoConsume = true
        try f.guest.consume(s)
        for _ in 0..<10_000 where s.received.count < data.count {
            if written < data.count { written += h.write(data[written...]) }
            try f.guest.pump(rounds: 4)
        }
        #expect(s.received == data)
    }

    @Test func noRxBuffersMeansNoReadsAndOrderIsKept() throws {
        let f = try VsockFixture(rxBuffers: 0)
        let listener = try f.listen(5005)
        let s = try f.guest.connect(to: 5005)
        try f.guest.pump()
        #expect(!s.established) // the RESPONSE waits for a buffer
        let h = try #require(try listener.accept())
        h.write("early")
        try f.guest.pump()
        #expect(f.guest.log.isEmpty)
        #expect(!isReadable(f.muxer.pollFD))
        // Buffers arrive (the driver would kick the rx queue).
        f.guest.rxTarget = 64
        try f.guest.refillRx()
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.response, .rw])
        #expect(String(decoding: s.received, as: UTF8.self) == "early")
    }

    @Test func creditRequestIsAnswered() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5006)
        let (s, _) = try f.guestConnect(listener, port: 5006)
        try f.guest.send(f.guest.header(s, .creditRequest))
        let packets = try f.guest.pump()
        let update = try #require(packets.first)
        #expect(update.op == .creditUpdate)
        #expect(update.header.bufAlloc == VirtioVsock.bufferSize && update.header.fwdCnt == 0)
    }
}
