import Glibc
import SwiftletSys
import SwiftletVirtio
import Testing

/// A device on a fresh socket directory, with a fake guest driving it.
struct VsockFixture {
    let dir: TempSocketDir
    let muxer: VsockMuxer
    let guest: FakeGuest

    init(cid: UInt32 = 3, rxLayout: FakeGuest.RxLayout = .split, rxBuffers: Int = 64, peers: PeerPolicy = .anyone) throws {
        dir = try TempSocketDir()
        muxer = try VsockMuxer(guestCID: cid, udsPath: dir.uds, peers: peers)
        guest = try FakeGuest(muxer: muxer, cid: cid, rxLayout: rxLayout, rxBuffers: rxBuffers)
    }

    /// A listener for guest connections to host port `port`.
    func listen(_ port: UInt32) throws -> HostListener { try HostListener("\(dir.uds)_\(port)") }

    /// Host to guest: CONNECT, REQUEST, RESPONSE, OK. The guest listens on `port`.
    func hostConnect(port: UInt32) throws -> (host: HostEnd, guest: GuestSocket, hostPort: UInt32) {
        guest.listening.insert(port)
        let host = try HostEnd.connect(dir.uds)
        host.write("CONNECT \(port)\n")
        let before = guest.unmatched.count
        try guest.pump()
        let request = try #require(guest.unmatched[before...].first { $0.op == .request && $0.header.dstPort == port })
        let socket = try #require(guest.socket(port, request.header.srcPort))
        try guest.pump()
        host.drain()
        let ok = Array("OK \(request.header.srcPort)\n".utf8)
        #expect(Array(host.received.prefix(ok.count)) == ok)
        host.received.removeFirst(min(ok.count, host.received.count))
        return (host, socket, request.header.srcPort)
    }

    /// Guest to host: REQUEST to `port`, RESPONSE, and the accepted host end.
    func guestConnect(_ listener: HostListener, port: UInt32, bufAlloc: UInt32 = 256 * 1024) throws -> (guest: GuestSocket, host: HostEnd) {
        let socket = try guest.connect(to: port, bufAlloc: bufAlloc)
        try guest.pump()
        #expect(socket.established)
        let host = try #require(try listener.accept())
        return (socket, host)
    }
}

@Suite("Vsock connections: hybrid CONNECT and guest-initiated")
struct VsockConnectTests {
    /// A peer policy (SO_PEERCRED) the other end fails: a host client is
    /// closed before its CONNECT line is read, and a guest connection to a
    /// listener of that process gets RST. Here the policy admits only pid 1,
    /// which this test process is not; with `.thisProcess` both work.
    @Test func peerPolicyRefusesOtherProcessesBothWays() throws {
        let f = try VsockFixture(peers: .process(1))
        f.guest.listening.insert(1234)
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 1234\n")
        try f.guest.pump()
        #expect(host.closedByPeer)
        #expect(f.muxer.statistics.connections == 0)
        let listener = try f.listen(5000)
        let socket = try f.guest.connect(to: 5000)
        try f.guest.pump()
        #expect(socket.gotRST && !socket.established)
        #expect(try listener.accept() != nil, "the connect itself happened; the peer check refused it")

        let ours = try VsockFixture(peers: .thisProcess)
        let l2 = try ours.listen(5001)
        let outward = try ours.guestConnect(l2, port: 5001)
        let inward = try ours.hostConnect(port: 1235)
        #expect(ours.muxer.statistics.connections == 2)
        withExtendedLifetime((outward, inward)) {}
    }

    @Test func hostConnectSendsRequestThenOK() throws {
        let f = try VsockFixture()
        f.guest.listening.insert(1234)
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 1234\n")
        let packets = try f.guest.pump()
        let request = try #require(packets.first)
        #expect(request.op == .request)
        #expect(request.header.srcCID == 2 && request.header.dstCID == 3)
        #expect(request.header.dstPort == 1234)
        #expect(request.header.srcPort >= VirtioVsock.firstHostPort)
        #expect(request.header.bufAlloc == VirtioVsock.bufferSize)
        #expect(request.header.len == 0)
        // The fake guest answered RESPONSE; the client reads OK <port>.
        try f.guest.pump()
        host.drain()
        #expect(String(decoding: host.received, as: UTF8.self) == "OK \(request.header.srcPort)\n")
        #expect(f.muxer.statistics.connections == 1)

        // Data both ways.
        let s = try #require(f.guest.socket(1234, request.header.srcPort))
        host.write("ping")
        try f.guest.pump()
        #expect(s.received == Array("ping".utf8))
        try f.guest.write(s, Array("pong".utf8)[...])
        try f.guest.pump()
        host.drain()
        #expect(String(decoding: host.received, as: UTF8.self) == "OK \(request.header.srcPort)\npong")
    }

    @Test func hostPortsAreUniqueAndDataAfterTheLineIsKept() throws {
        let f = try VsockFixture()
        f.guest.listening.insert(7)
        let a = try HostEnd.connect(f.dir.uds)
        let b = try HostEnd.connect(f.dir.uds)
        // The line arrives in pieces, with the stream right behind it in the same write.
        a.write("CONN")
        try f.guest.pump()
        a.write("ECT 7\nearly bytes")
        b.write("connect 7\r\n")
        try f.guest.pump()
        try f.guest.pump()
        let requests = f.guest.unmatched.filter { $0.op == .request }
        #expect(requests.count == 2)
        #expect(Set(requests.map(\.header.srcPort)).count == 2)
        let sockets = requests.compactMap { f.guest.socket(7, $0.header.srcPort) }
        #expect(sockets.count == 2)
        // Exactly one got the early bytes, after its RESPONSE.
        let received = sockets.map { String(decoding: $0.received, as: UTF8.self) }.sorted()
        #expect(received == ["", "early bytes"])
    }

    @Test func guestRefusalClosesTheHostSocket() throws {
        let f = try VsockFixture()
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 99\n") // the fake guest does not listen on 99: it answers RST
        try f.guest.pump()
        #expect(f.guest.unmatched.contains { $0.op == .request && $0.header.dstPort == 99 })
        #expect(host.closedByPeer)
        #expect(host.received.isEmpty)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func clientLeavingBeforeTheGuestAnswersResetsTheGuest() throws {
        let f = try VsockFixture()
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 5\n")
        f.muxer.process() // REQUEST queued; the guest has not seen it
        host.close()
        try f.guest.pump()
        let ops = f.guest.unmatched.filter { $0.header.dstPort == 5 }.map(\.op)
        #expect(ops.last == .rst)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test(arguments: ["GET / HTTP/1.1\n", "CONNECT x\n", String(repeating: "A", count: 40), "CONNECT 1 2\n"])
    func badConnectLineClosesTheClient(_ line: String) throws {
        let f = try VsockFixture()
        let host = try HostEnd.connect(f.dir.uds)
        host.write(line)
        try f.guest.pump()
        #expect(host.closedByPeer)
        #expect(f.guest.log.isEmpty)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func clientClosingMidLineIsDropped() throws {
        let f = try VsockFixture()
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 1")
        try f.guest.pump()
        #expect(f.muxer.statistics.connections == 1)
        host.close()
        try f.guest.pump()
        #expect(f.muxer.statistics.connections == 0)
        #expect(f.guest.log.isEmpty)
    }

    @Test(arguments: [FakeGuest.RxLayout.split, .single])
    func guestConnectReachesTheListener(_ layout: FakeGuest.RxLayout) throws {
        let f = try VsockFixture(rxLayout: layout)
        let listener = try f.listen(5000)
        let s = try f.guest.connect(to: 5000)
        let packets = try f.guest.pump()
        let response = try #require(packets.first)
        #expect(response.op == .response)
        #expect(response.header.srcPort == 5000 && response.header.dstPort == s.guestPort)
        #expect(response.header.bufAlloc == VirtioVsock.bufferSize)
        let host = try #require(try listener.accept())
        try f.guest.write(s, Array("hello host".utf8)[...])
        try f.guest.pump()
        host.drain()
        #expect(String(decoding: host.received, as: UTF8.self) == "hello host")
        host.write("hello guest")
        try f.guest.pump()
        #expect(String(decoding: s.received, as: UTF8.self) == "hello guest")
    }

    @Test func guestConnectWithoutListenerGetsRST() throws {
        let f = try VsockFixture()
        let s = try f.guest.connect(to: 6000)
        try f.guest.pump()
        #expect(s.gotRST)
        #expect(!s.established)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func guestConnectToAnotherCIDGetsRST() throws {
        let f = try VsockFixture()
        let h = VsockHeader(srcCID: 3, dstCID: 5, srcPort: 40000, dstPort: 80, op: .request, bufAlloc: 4096)
        try f.guest.send(h)
        let packets = try f.guest.pump()
        let rst = try #require(packets.first)
        #expect(rst.op == .rst)
        // Addressed as from the CID the guest called, so its socket matches it.
        #expect(rst.header.srcCID == 5)
        #expect(rst.header.srcPort == 80 && rst.header.dstPort == 40000)
    }

    @Test func packetsFromAForeignCIDAreDropped() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5000)
        let h = VsockHeader(srcCID: 7, dstCID: 2, srcPort: 40000, dstPort: 5000, op: .request, bufAlloc: 4096)
        try f.guest.send(h)
        try f.guest.pump()
        #expect(f.guest.log.isEmpty)
        #expect(try listener.accept() == nil)
        #expect(f.muxer.statistics.droppedPackets == 1)
    }
}
