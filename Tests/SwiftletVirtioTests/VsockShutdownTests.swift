import Glibc
import SwiftletSys
import SwiftletVirtio
import Testing

@Suite("Vsock half-close, shutdown and reset")
struct VsockShutdownTests {
    @Test func hostHalfCloseGivesTheGuestShutdownSend() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5100)
        let (s, h) = try f.guestConnect(listener, port: 5100)
        h.write("last words")
        h.shutdownWrite()
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.rw, .shutdown])
        #expect(packets.last?.header.flags == VsockShutdown.send)
        #expect(String(decoding: s.received, as: UTF8.self) == "last words")
        // The guest may still send.
        try f.guest.write(s, Array("reply".utf8)[...])
        try f.guest.pump()
        h.drain()
        #expect(String(decoding: h.received, as: UTF8.self) == "reply")
        #expect(!h.eof)
        #expect(f.muxer.statistics.connections == 1)
        // The guest finishes too: both directions are done, the connection ends.
        try f.guest.shutdown(s, flags: VsockShutdown.send)
        try f.guest.pump()
        #expect(h.closedByPeer)
        #expect(s.gotRST)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestHalfCloseShutsTheSocketForWriting() throws {
        let f = try VsockFixture()
        let (h, s, _) = try f.hostConnect(port: 81)
        try f.guest.write(s, Array("request".utf8)[...])
        try f.guest.shutdown(s, flags: VsockShutdown.send)
        try f.guest.pump()
        h.drain()
        #expect(String(decoding: h.received, as: UTF8.self) == "request")
        #expect(h.eof, "the host reads EOF after the guest's SHUTDOWN(SEND)")
        // The host may still answer.
        h.write("response")
        try f.guest.pump()
        #expect(String(decoding: s.received, as: UTF8.self) == "response")
        #expect(f.muxer.statistics.connections == 1)
        h.shutdownWrite()
        try f.guest.pump()
        #expect(s.gotRST)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestShutdownSendWaitsForBufferedData() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5101)
        let (s, h) = try f.guestConnect(listener, port: 5101)
        var rng = TestRandom(state: 11)
        let data = rng.bytes(1 << 20)
        var sent = 0
        for _ in 0..<1000 {
            let n = try f.guest.write(s, data[sent...])
            sent += n
            try f.guest.pump()
            if n == 0 { break }
        }
        #expect(f.muxer.statistics.bufferedGuestBytes > 0)
        try f.guest.shutdown(s, flags: VsockShutdown.send)
        try f.guest.pump()
        h.drain()
        #expect(!h.eof || h.received.count == sent)
        for _ in 0..<10_000 where !h.eof {
            h.drain()
            try f.guest.pump(rounds: 4)
        }
        #expect(h.eof)
        #expect(h.received == Array(data[0..<sent]))
    }

    @Test func guestFullShutdownIsAnsweredWithRST() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5102)
        let (s, h) = try f.guestConnect(listener, port: 5102)
        try f.guest.write(s, Array("bye".utf8)[...])
        try f.guest.shutdown(s, flags: VsockShutdown.both)
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.rst])
        #expect(s.gotRST)
        h.drain()
        #expect(String(decoding: h.received, as: UTF8.self) == "bye")
        #expect(h.eof)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestFullShutdownFlushesBufferedDataFirst() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5103)
        let (s, h) = try f.guestConnect(listener, port: 5103)
        var rng = TestRandom(state: 12)
        let data = rng.bytes(1 << 20)
        var sent = 0
        for _ in 0..<1000 {
            let n = try f.guest.write(s, data[sent...])
            sent += n
            try f.guest.pump()
            if n == 0 { break }
        }
        try f.guest.shutdown(s, flags: VsockShutdown.both)
        try f.guest.pump()
        #expect(!s.gotRST, "RST only once the buffer drained")
        for _ in 0..<10_000 where !h.eof {
            h.drain()
            try f.guest.pump(rounds: 4)
        }
        #expect(h.received == Array(data[0..<sent]))
        #expect(s.gotRST)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestRSTClosesTheSocket() throws {
        let f = try VsockFixture()
        let (h, s, _) = try f.hostConnect(port: 82)
        try f.guest.send(f.guest.header(s, .rst))
        let packets = try f.guest.pump()
        #expect(packets.isEmpty, "no answer to an RST")
        #expect(h.closedByPeer)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func hostCloseDeliversWhatIsLeftThenRST() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5104)
        let (s, h) = try f.guestConnect(listener, port: 5104, bufAlloc: 4096)
        s.autoConsume = false
        var rng = TestRandom(state: 13)
        let data = rng.bytes(20000)
        #expect(h.write(data[...]) == data.count)
        h.close()
        try f.guest.pump()
        #expect(s.received == Array(data[0..<4096]))
        #expect(!s.gotRST, "unread data first")
        #expect(!isReadable(f.muxer.pollFD), "a hung-up socket waiting for credit does not spin")
        s.autoConsume = true
        try f.guest.consume(s)
        try f.guest.pump()
        #expect(s.received == data)
        #expect(s.gotRST)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func deviceResetClosesEverything() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5105)
        let (_, guestInitiated) = try f.guestConnect(listener, port: 5105)
        let (hostInitiated, _, _) = try f.hostConnect(port: 83)
        let handshaking = try HostEnd.connect(f.dir.uds)
        handshaking.write("CONN")
        let requested = try HostEnd.connect(f.dir.uds)
        requested.write("CONNECT 1000\n")
        f.muxer.process()
        f.muxer.process()
        #expect(f.muxer.statistics.connections == 4)
        f.muxer.reset()
        #expect(f.muxer.statistics.connections == 0)
        #expect(f.muxer.statistics.queuedPackets == 0)
        #expect(f.muxer.statistics.driverResets == 1)
        // The reset (a vCPU thread's) only wakes the loop; its thread closes the sockets.
        #expect(!handshaking.closedByPeer)
        #expect(isReadable(f.muxer.pollFD))
        f.muxer.process()
        for end in [guestInitiated, hostInitiated, handshaking, requested] { #expect(end.closedByPeer) }
        // The listener still works after the reset, with a new driver.
        let g2 = try FakeGuest(muxer: f.muxer)
        g2.listening.insert(84)
        let again = try HostEnd.connect(f.dir.uds)
        again.write("CONNECT 84\n")
        try g2.pump()
        try g2.pump()
        again.drain()
        #expect(String(decoding: again.received, as: UTF8.self).hasPrefix("OK "))
    }

    @Test func transportResetEventAndDroppedConnections() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5106)
        let (_, h) = try f.guestConnect(listener, port: 5106)
        f.muxer.transportReset()
        f.muxer.process()
        #expect(h.closedByPeer)
        try f.guest.pump()
        #expect(f.guest.events == [[0, 0, 0, 0]])
        #expect(f.muxer.statistics.connections == 0)
        try f.guest.pump()
        #expect(f.guest.events.count == 1, "one event per reset")
    }
}
