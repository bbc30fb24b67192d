import Glibc
import SwiftletSys
import SwiftletVirtio
import Testing

/// No host client holds a slot for ever: its handshake (the CONNECT line,
/// then the guest's answer to the REQUEST) has a 2 s deadline, and at most
/// `maxHandshakes` clients are in one at a time, so idle clients never take
/// the slots the guest's own connections (the agent's) need.
@Suite("Vsock handshake deadlines")
struct VsockDeadlineTests {
    /// Lets the deadline pass, then gives the loop its turn (the timer made
    /// the poll fd readable).
    func afterDeadline(_ f: VsockFixture) {
        usleep(UInt32((VirtioVsock.handshakeTimeoutNanos + 2 * VirtioVsock.deadlineTickNanos) / 1000))
        #expect(isReadable(f.muxer.pollFD), "the deadline timer wakes the loop")
        f.muxer.process()
    }

    @Test func clientThatNeverSendsItsLineIsDropped() throws {
        let f = try VsockFixture()
        let silent = try HostEnd.connect(f.dir.uds)
        let partial = try HostEnd.connect(f.dir.uds)
        partial.write("CONNECT 12")
        f.muxer.process()
        f.muxer.process()
        #expect(f.muxer.statistics.handshakes == 2)
        #expect(!silent.closedByPeer && !partial.closedByPeer)
        afterDeadline(f)
        #expect(silent.closedByPeer && partial.closedByPeer)
        #expect(f.muxer.statistics.handshakesTimedOut == 2)
        #expect(f.muxer.statistics.connections == 0 && f.muxer.statistics.handshakes == 0)
        // The timer stopped with the last handshake: the loop is not woken again.
        usleep(UInt32(2 * VirtioVsock.deadlineTickNanos / 1000))
        f.muxer.process()
        #expect(!isReadable(f.muxer.pollFD))
    }

    @Test func requestTheGuestNeverAnswersIsReset() throws {
        let f = try VsockFixture()
        let client = try HostEnd.connect(f.dir.uds)
        client.write("CONNECT 99\n")
        f.muxer.process()
        f.muxer.process()
        #expect(f.muxer.statistics.queuedPackets == 1, "the REQUEST waits for the guest, which never takes it")
        afterDeadline(f)
        #expect(client.closedByPeer)
        #expect(f.muxer.statistics.handshakesTimedOut == 1)
        // The REQUEST, never taken, is skipped with its connection gone; the
        // guest gets the RST for it (one for a connection it does not know is ignored).
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.rst])
    }

    @Test func establishedConnectionsHaveNoDeadline() throws {
        let f = try VsockFixture()
        let (host, guest, _) = try f.hostConnect(port: 1234)
        #expect(f.muxer.statistics.handshakes == 0)
        afterDeadline(f)
        #expect(!host.closedByPeer && guest.established)
        #expect(f.muxer.statistics.handshakesTimedOut == 0)
    }

    @Test("1,024 idle clients: at most maxHandshakes are held, and the guest still connects out")
    func idleClientsCannotStarveTheGuest() throws {
        let f = try VsockFixture()
        var clients: [HostEnd] = []
        var refused = 0
        for _ in 0..<1024 {
            // The listener's backlog is bounded: the loop accepts as they come.
            if let c = try? HostEnd.connect(f.dir.uds) { clients.append(c) } else { refused += 1 }
            if clients.count % 16 == 0 { f.muxer.process() }
        }
        for _ in 0..<80 { f.muxer.process() }
        #expect(f.muxer.statistics.handshakes == VirtioVsock.maxHandshakes)
        #expect(f.muxer.statistics.connections == VirtioVsock.maxHandshakes)
        #expect(clients.filter(\.closedByPeer).count >= clients.count - VirtioVsock.maxHandshakes)
        let listener = try f.listen(52)
        let agent = try f.guestConnect(listener, port: 52)
        #expect(agent.guest.established, "the agent's connection gets through")
        afterDeadline(f)
        #expect(f.muxer.statistics.connections == 1, "only the guest's connection is left")
        print("vsock idle clients: \(clients.count) connected, \(refused) refused at connect, \(VirtioVsock.maxHandshakes) held until the deadline")
    }
}
