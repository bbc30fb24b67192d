import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import Testing

@Suite("Vsock hostile guests")
struct VsockHostileTests {
    @Test func shortHeaderIsDropped() throws {
        let f = try VsockFixture()
        let h = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1, dstPort: 2, op: .request)
        try f.guest.sendRaw([(20, false, Array(h.bytes[0..<20]))])
        try f.guest.sendRaw([(20, false, Array(h.bytes[0..<20])), (24, true, nil)]) // the rest is device-writable
        try f.guest.pump()
        #expect(f.guest.log.isEmpty)
        #expect(f.muxer.statistics.droppedPackets == 2)
    }

    @Test func lengthMismatchesGetRST() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5200)
        let (s, h) = try f.guestConnect(listener, port: 5200)
        // len says 100, nothing follows.
        try f.guest.send(f.guest.header(s, .rw, len: 100))
        try f.guest.pump()
        #expect(s.gotRST)
        #expect(h.closedByPeer)
        #expect(h.received.isEmpty)

        // len shorter than the payload, on an unknown connection.
        let ghost = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 777, dstPort: 5200, len: 2, op: .rw)
        try f.guest.send(ghost, payload: [1, 2, 3, 4])
        // len over 64 KiB, matching the bytes sent (in two descriptors).
        let big = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 778, dstPort: 5200, len: 70000, op: .rw)
        try f.guest.sendRaw([(44, false, big.bytes), (35000, false, nil), (35000, false, nil)])
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.rst, .rst])
        #expect(packets.map(\.header.dstPort) == [777, 778])
    }

    @Test func unknownOpOrTypeResetsTheConnection() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5201)
        let (s, h) = try f.guestConnect(listener, port: 5201)
        var bad = f.guest.header(s, .rw)
        bad.op = 99
        try f.guest.send(bad)
        try f.guest.pump()
        #expect(s.gotRST)
        #expect(h.closedByPeer)

        let (s2, h2) = try f.guestConnect(listener, port: 5201)
        var seqpacket = f.guest.header(s2, .rw)
        seqpacket.type = 2
        try f.guest.send(seqpacket)
        try f.guest.pump()
        #expect(s2.gotRST)
        #expect(h2.closedByPeer)
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func packetsForUnknownConnections() throws {
        let f = try VsockFixture()
        for op in [VsockOp.rw, .response, .shutdown, .creditUpdate, .creditRequest] {
            let h = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1234, dstPort: 4321, len: op == .rw ? 3 : 0, op: op)
            try f.guest.send(h, payload: op == .rw ? [1, 2, 3] : [])
        }
        try f.guest.send(VsockHeader(srcCID: 3, dstCID: 2, srcPort: 1234, dstPort: 4321, op: .rst))
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == Array(repeating: .rst, count: 5), "RST for each, none for the RST")
    }

    @Test func protocolViolationsOnLiveConnections() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5202)
        // A second REQUEST on a live connection.
        let (s, h) = try f.guestConnect(listener, port: 5202)
        try f.guest.send(f.guest.header(s, .request))
        try f.guest.pump()
        #expect(s.gotRST && h.closedByPeer)
        // Data after SHUTDOWN(SEND).
        let (s2, h2) = try f.guestConnect(listener, port: 5202)
        try f.guest.shutdown(s2, flags: VsockShutdown.send)
        try f.guest.send(f.guest.header(s2, .rw, len: 1), payload: [9])
        try f.guest.pump()
        #expect(s2.gotRST && h2.closedByPeer)
        // Data to a host-initiated connection before the RESPONSE: the REQUEST
        // is taken off the ring by hand, so the fake guest does not answer it.
        let host = try HostEnd.connect(f.dir.uds)
        host.write("CONNECT 55\n")
        f.muxer.process() // accepts
        f.muxer.process() // reads the line
        _ = try f.muxer.serveRx(f.guest.rxq)
        let used = try f.guest.rx.takeUsed()
        let request = try #require(used.compactMap { VsockHeader($0.written) }.first)
        #expect(request.knownOp == .request)
        let early = VsockHeader(srcCID: 3, dstCID: 2, srcPort: 55, dstPort: request.srcPort, len: 1, op: .rw, bufAlloc: 65536)
        try f.guest.send(early, payload: [1])
        let packets = try f.guest.pump()
        #expect(packets.map(\.op) == [.rst])
        #expect(host.closedByPeer)
        #expect(host.received.isEmpty, "no OK line")
        #expect(f.muxer.statistics.connections == 0)
    }

    @Test func malformedChainsComeBackEmpty() throws {
        let f = try VsockFixture()
        // A buffer outside guest memory.
        try f.guest.sendRaw([(44, false, nil)], address: { _ in 0x1_0000_0000 })
        // Only device-writable buffers.
        try f.guest.sendRaw([(64, true, nil)])
        try f.guest.pump() // reclaimTx checks every used length is 0
        #expect(f.muxer.statistics.droppedPackets == 2)
        // The queue still works.
        let listener = try f.listen(5203)
        _ = try f.guestConnect(listener, port: 5203)
    }

    @Test func rxBufferTooSmallIsSkipped() throws {
        let f = try VsockFixture(rxBuffers: 0)
        try f.guest.rx.post([(20, true, nil)])
        try f.guest.rx.post([(0, true, nil)])
        let listener = try f.listen(5204)
        let s = try f.guest.connect(to: 5204)
        try f.guest.pump()
        #expect(!s.established)
        f.guest.rxTarget = 4
        try f.guest.refillRx()
        try f.guest.pump()
        #expect(s.established)
        _ = try listener.accept()
    }

    @Test func randomPacketsNeverCrash() throws {
        let f = try VsockFixture()
        let listener = try f.listen(5205)
        var rng = TestRandom(state: 1234)
        var live: [GuestSocket] = []
        for _ in 0..<3 { live.append(try f.guestConnect(listener, port: 5205).guest) }
        for i in 0..<2000 {
            let s = live[rng.int(0...2)]
            let payload = rng.bytes([0, 1, 7, 100, 4096][rng.int(0...4)])
            let lenChoices = [payload.count, payload.count, rng.int(0...70000)]
            var h = VsockHeader(
                srcCID: [3, 3, 3, 2, 0xffff_ffff][rng.int(0...4)], dstCID: [2, 2, 2, 3, 1][rng.int(0...4)],
                srcPort: [s.guestPort, UInt32(rng.int(0...10))][rng.int(0...1)],
                dstPort: [5205, 5206, UInt32.max][rng.int(0...2)],
                len: UInt32(lenChoices[rng.int(0...2)]), type: [1, 1, 0, 2][rng.int(0...3)],
                rawOp: UInt16(rng.int(0...9)), flags: UInt32(rng.int(0...4)),
                bufAlloc: UInt32(truncatingIfNeeded: rng.next()), fwdCnt: UInt32(truncatingIfNeeded: rng.next()))
            if i % 7 == 0 { h.op = VsockOp.request.rawValue }
            try f.guest.send(h, payload: payload, together: rng.int(0...1) == 0)
            if i % 16 == 0 {
                try f.guest.pump(rounds: 8)
                while let accepted = try listener.accept() { accepted.write("x") }
            }
        }
        try f.guest.pump()
        #expect(f.muxer.statistics.connections <= VirtioVsock.maxConnections)
        #expect(f.muxer.statistics.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize))
        // Still serving.
        let fresh = try f.guestConnect(listener, port: 5205)
        #expect(fresh.guest.established)
    }
}

@Suite("Vsock listener and device lifecycle")
struct VsockLifecycleTests {
    @Test func socketFileIsRemovedOnCloseAndDeinit() throws {
        let dir = try TempSocketDir()
        var st = stat()
        do {
            let muxer = try VsockMuxer(guestCID: 3, udsPath: dir.uds)
            #expect(lstat(dir.uds, &st) == 0)
            muxer.close()
            #expect(lstat(dir.uds, &st) != 0)
            muxer.close() // idempotent
        }
        do {
            _ = try VsockMuxer(guestCID: 3, udsPath: dir.uds)
        }
        #expect(lstat(dir.uds, &st) != 0, "deinit removes it")
    }

    @Test func liveListenerIsAnErrorAndAStaleOneIsReplaced() throws {
        let dir = try TempSocketDir()
        let first = try VsockMuxer(guestCID: 3, udsPath: dir.uds)
        #expect(throws: VsockError.inUse(dir.uds)) { _ = try VsockMuxer(guestCID: 4, udsPath: dir.uds) }
        withExtendedLifetime(first) {}
        // A socket file with nothing behind it (its process died): bound, closed, never unlinked.
        let stalePath = dir.path + "/stale.sock"
        Glibc.close(try UnixSocket.listen(at: stalePath).release())
        let replaced = try VsockMuxer(guestCID: 3, udsPath: stalePath)
        let client = try HostEnd.connect(stalePath)
        replaced.process()
        #expect(replaced.statistics.connections == 1)
        client.close()
        replaced.close()
    }

    @Test func pathThatIsNotASocketIsKept() throws {
        let dir = try TempSocketDir()
        let path = dir.path + "/file"
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0)
        Glibc.close(fd)
        #expect(throws: VsockError.notASocket(path)) { _ = try VsockMuxer(guestCID: 3, udsPath: path) }
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFREG)
    }

    @Test func invalidCIDAndPath() throws {
        let dir = try TempSocketDir()
        for cid: UInt32 in [0, 1, 2, .max] {
            #expect(throws: VsockError.invalidCID(cid)) { _ = try VsockMuxer(guestCID: cid, udsPath: dir.uds) }
        }
        let long = dir.path + "/" + String(repeating: "s", count: 120)
        #expect(throws: VsockError.invalidPath(long)) { _ = try VsockMuxer(guestCID: 3, udsPath: long) }
        #expect(throws: VsockError.invalidPath("")) { _ = try VsockMuxer(guestCID: 3, udsPath: "") }
        #expect(throws: (any Error).self) { _ = try VsockMuxer(guestCID: 3, udsPath: dir.path + "/missing/v.sock") }
    }

    @Test func configSpaceHoldsTheGuestCID() throws {
        let dir = try TempSocketDir()
        let muxer = try VsockMuxer(guestCID: 0x1234_5678, udsPath: dir.uds)
        var bytes = [UInt8](repeating: 0xee, count: 12)
        bytes.withUnsafeMutableBytes { muxer.readConfig(offset: 0, into: $0) }
        #expect(bytes == [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0])
        var high = [UInt8](repeating: 0xee, count: 4)
        high.withUnsafeMutableBytes { muxer.readConfig(offset: 4, into: $0) }
        #expect(high == [0, 0, 0, 0])
        high.withUnsafeMutableBytes { muxer.readConfig(offset: Int.max, into: $0) }
        #expect(high == [0, 0, 0, 0])
        #expect(muxer.deviceFeatures == VirtioFeature.version1)
    }

    @Test func abstractSocketNames() throws {
        let name = "@swiftlet-vsock-test-\(getpid())"
        let muxer = try VsockMuxer(guestCID: 3, udsPath: name)
        let guest = try FakeGuest(muxer: muxer)
        let listener = try HostListener(name + "_7000")
        let s = try guest.connect(to: 7000)
        try guest.pump()
        #expect(s.established)
        #expect(try listener.accept() != nil)
        guest.listening.insert(9)
        let host = try HostEnd.connect(name)
        host.write("CONNECT 9\n")
        try guest.pump()
        try guest.pump()
        host.drain()
        #expect(String(decoding: host.received, as: UTF8.self).hasPrefix("OK "))
    }
}
