import Glibc
import SwiftletMemory
import SwiftletSys

/// The tx queue: packets from the guest. Every chain is read as one byte
/// stream (header, then payload), so the header and payload may share a
/// descriptor or be split in any way.
extension VsockMuxState {
    mutating func serveTx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        txStalled = false
        let workBefore = rxWorkQueued
        let served = try queue.drain(onMalformed: { stats.droppedPackets += 1 }, stop: {
            if closed { return true }
            // The guest is not taking what we owe it; leave its packets in
            // the ring until it does.
            if pending.count >= VsockMuxer.maxPendingPackets { txStalled = true }
            return txStalled
        }) { chain in
            guestPacket(chain, memory: queue.memory)
            return 0
        }
        // New packets or socket data for the guest: have the loop serve rx.
        if rxWorkQueued != workBefore { poller.signalWake() }
        return served && queue.needsInterrupt()
    }

    /// Validates and acts on one guest packet.
    mutating func guestPacket(_ chain: DescriptorChain, memory: GuestMemory) {
        var raw = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt32(0)) // 44 bytes
        guard chain.readableLength >= VirtioVsock.headerSize else {
            stats.droppedPackets += 1
            return
        }
        // SAFETY: reads exactly the local header buffer's bytes; the chain read checks the guest's side.
        let header: VsockHeader? = unsafe withUnsafeMutableBytes(of: &raw) { bytes in
            let view = unsafe UnsafeMutableRawBufferPointer(rebasing: bytes[0..<VirtioVsock.headerSize])
            guard unsafe (try? chain.read(from: memory, offset: 0, into: view)) != nil else { return nil }
            return unsafe VsockHeader(UnsafeRawBufferPointer(view))
        }
        guard let h = header else {
            stats.droppedPackets += 1
            return
        }
        // A packet that does not come from the guest's own CID cannot be
        // answered sensibly: drop it.
        guard h.srcCID == UInt64(guestCID) else {
            stats.droppedPackets += 1
            return
        }
        let key = VsockConnectionKey(local: h.dstPort, peer: h.srcPort)
        let conn = byKey[key]
        let payload = chain.readableLength - VirtioVsock.headerSize
        guard h.dstCID == VirtioVsock.hostCID, h.type == VsockType.stream,
              Int(h.len) == payload, payload <= VirtioVsock.maxPayload,
              let op = h.knownOp
        else {
            // Another CID, another socket type, a length that does not match
            // the bytes sent, or an unknown op: RST, and the connection (if any) ends.
            if let conn, h.dstCID == VirtioVsock.hostCID { resetConnection(conn) } else { replyReset(h) }
            return
        }
        guard let conn else {
            if op == .request { openHostSocket(h) } else { replyReset(h) }
            return
        }
        conn.recordPeerCredit(h)
        switch (conn.state, op) {
        case (.requested, .response):
            establish(conn)
        case (.requested, .rst), (.established, .rst):
            close(conn)
        case (.established, .rw):
            guestData(conn, chain, memory: memory, count: payload)
        case (.established, .creditUpdate):
            break
        case (.established, .creditRequest):
            enqueueCreditUpdate(conn, forced: true)
        case (.established, .shutdown):
            guestShutdown(conn, flags: h.flags)
        default:
            // REQUEST or RESPONSE on a live connection, data before the
            // RESPONSE: the guest is confused; end the connection.
            resetConnection(conn)
        }
        if !conn.isClosed { updateInterest(conn) }
    }

    /// The guest connects to host port `h.dstPort`: connect to `<udsPath>_<port>`.
    mutating func openHostSocket(_ h: VsockHeader) {
        guard byTag.count < VirtioVsock.maxConnections,
              let socket = try? UnixSocket.connect(to: "\(udsPath)_\(h.dstPort)"), peers.admits(socket.raw)
        else { return replyReset(h) }
        let conn = VsockConnection(tag: allocateTag(), socket: socket, state: .established,
                                   key: VsockConnectionKey(local: h.dstPort, peer: h.srcPort), hostInitiated: false)
        conn.recordPeerCredit(h)
        guard register(conn) else { return replyReset(h) }
        enqueue(.response(conn.tag))
    }

    /// The guest accepted a host client's connection: `OK <port>\n` goes to
    /// the client ahead of any data, and the stream starts.
    mutating func establish(_ conn: VsockConnection) {
        guard let key = conn.key else { return resetConnection(conn) }
        conn.state = .established
        endHandshake(conn)
        let ok = VsockConnectLine.okLine(hostPort: key.local)
        // SAFETY: the reply's bytes, lent for the call and copied.
        unsafe ok.withUnsafeBytes { unsafe conn.writeBuffer.append($0) }
        conn.controlPrefix += ok.count
        flush(conn)
    }

    /// RW from the guest: written straight from guest memory to the socket;
    /// what the socket does not take is buffered, within the credit we gave.
    mutating func guestData(_ conn: VsockConnection, _ chain: DescriptorChain, memory: GuestMemory, count: Int) {
        guard count > 0 else { return }
        // Data after the guest said it sends no more, to a socket that hung
        // up, or beyond the buffer we advertised: the connection ends.
        guard !conn.guestShutSend, !conn.closeWhenDrained, !conn.hostHungUp, conn.canAccept(count) else {
            return resetConnection(conn)
        }
        conn.rxCnt &+= UInt32(count)
        var written = 0
        if conn.writeBuffer.isEmpty {
            let fd = conn.fd
            var result: Int?
            do {
                // SAFETY: one iovec per readable buffer at most, each a view checked by the chain, living only inside
                // this call.
                result = unsafe try withUnsafeTemporaryAllocation(of: iovec.self, capacity: max(1, chain.readableCount)) { iovs throws(VirtqueueError) in
                    var used = 0
                    unsafe try chain.forEachSegment(in: memory, deviceWritable: false, offset: VirtioVsock.headerSize, count: count) { view in
                        // SAFETY: at most one view per readable buffer; checked anyway.
                        precondition(used < iovs.count)
                        unsafe iovs[used] = unsafe iovec(iov_base: view.baseAddress, iov_len: view.count)
                        used += 1
                    }
                    return unsafe send(fd, UnsafeMutableBufferPointer(rebasing: iovs[0..<used]))
                }
            } catch {
                result = nil
            }
            guard let n = result else { return resetConnection(conn) }
            written = n
            conn.fwdCnt &+= UInt32(n)
        }
        if written < count {
            let rest = count - written
            // SAFETY: `dst` is exactly the `rest` bytes just added to the buffer; the chain read checks the guest's
            // side.
            let copied = unsafe conn.writeBuffer.append(count: rest) { dst in
                unsafe (try? chain.read(from: memory, offset: VirtioVsock.headerSize + written, into: dst)) != nil
            }
            guard copied else { return resetConnection(conn) }
        }
        afterWrite(conn)
    }

    /// SHUTDOWN from the guest. SEND: the socket gets `shutdown(SHUT_WR)` once
    /// what we hold is written. Both: the connection ends (RST, as Linux
    /// expects), after the buffered data is written.
    mutating func guestShutdown(_ conn: VsockConnection, flags: UInt32) {
        if flags & VsockShutdown.receive != 0 { conn.guestShutRecv = true }
        if flags & VsockShutdown.send != 0 { conn.guestShutSend = true }
        if conn.guestShutRecv && conn.guestShutSend {
            conn.closeWhenDrained = true
            if conn.inRxReady { conn.inRxReady = false }
        }
        afterWrite(conn)
    }
}
