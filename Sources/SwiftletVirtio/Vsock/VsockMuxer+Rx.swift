import Glibc
import SwiftletMemory
import SwiftletSys

/// The rx and event queues: packets for the guest. Control packets go
/// first, in order; then each readable socket in turn gets one packet per
/// round, read straight into the guest's buffer (no copy), within its credit.
extension VsockMuxState {
    /// How one attempt to read a socket into an rx buffer ended.
    enum ReadOutcome {
        /// A data packet went to the guest; the socket may have more.
        case delivered
        /// No rx buffer: wait for the guest to give some.
        case noBuffer
        /// The socket had nothing (EAGAIN): watch it again.
        case drained
        /// The guest has no credit left: asked for more; stop reading.
        case stalled
        /// EOF, an error, or nothing more to read: handled (packets queued, maybe closed).
        case finished
    }

    mutating func serveRx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        if let held = heldRx, held.queue !== queue { heldRx = nil } // the driver set up a new queue
        rxPushed = false
        var budget = 64 // rounds of one packet per ready socket
        delivery: while !closed {
            // Control packets, in order, before any more data.
            while let packet = pending.first {
                guard let packetAndConnection = materialize(packet) else {
                    pending.removeFirst()
                    continue
                }
                let (header, conn) = packetAndConnection
                guard let chain = try takeRxChain(queue) else { break delivery }
                let bytes = header.bytes
                // SAFETY: the packet's bytes, lent for the call; the chain write checks the guest's side.
                let wrote = unsafe bytes.withUnsafeBytes { unsafe (try? chain.write(to: queue.memory, offset: 0, from: $0)) != nil }
                try queue.pushUsed(head: chain.head, length: wrote ? UInt32(VirtioVsock.headerSize) : 0)
                rxPushed = true
                guard wrote else { continue } // a buffer too small for a header: the next one gets this packet
                pending.removeFirst()
                if let conn { sent(header, for: conn) }
            }
            // One data packet for each readable socket per round.
            guard !rxReady.isEmpty else { break }
            // Sockets marked ready during the round (re-armed ones) join after it.
            let round = rxReady
            rxReady = []
            var next: [UInt64] = []
            var progress = false
            var noBuffer = false
            for tag in round {
                guard let conn = byTag[tag], conn.inRxReady else { continue }
                if noBuffer {
                    next.append(tag)
                    continue
                }
                switch try readSocket(conn, queue) {
                case .delivered:
                    progress = true
                    next.append(tag)
                case .noBuffer:
                    noBuffer = true
                    next.append(tag)
                case .drained, .stalled:
                    conn.inRxReady = false
                    updateInterest(conn)
                case .finished:
                    progress = true
                    conn.inRxReady = false
                }
            }
            rxReady = next + rxReady
            if noBuffer || !progress { break }
            budget -= 1
            if budget == 0 {
                // Busy sockets and a guest that keeps up: let other devices
                // have the loop; the wake brings us back.
                poller.signalWake()
                break
            }
        }
        // Room for packets again: let the loop resume a stalled tx queue.
        if txStalled && pending.count < VsockMuxer.maxPendingPackets { poller.signalWake() }
        return rxPushed && queue.needsInterrupt()
    }

    /// The header for a queued packet, and its connection; nil to skip it
    /// (the connection is gone, or the update is no longer news).
    mutating func materialize(_ packet: VsockPacketQueue.Packet) -> (VsockHeader, VsockConnection?)? {
        let op: VsockOp, tag: UInt64
        var flags: UInt32 = 0
        switch packet {
        case let .raw(h): return (h, nil)
        case let .request(t): (op, tag) = (.request, t)
        case let .response(t): (op, tag) = (.response, t)
        case let .creditUpdate(t): (op, tag) = (.creditUpdate, t)
        case let .creditRequest(t): (op, tag) = (.creditRequest, t)
        case let .shutdownSend(t):
            (op, tag) = (.shutdown, t)
            flags = VsockShutdown.send
        }
        guard let conn = byTag[tag], let header = conn.header(op: op, guestCID: guestCID, flags: flags) else { return nil }
        if op == .creditUpdate && !conn.creditUpdateForced && conn.fwdCnt == conn.lastSentFwdCnt {
            // A data packet carried the latest count already.
            conn.creditUpdateQueued = false
            return nil
        }
        return (header, conn)
    }

    /// Bookkeeping once a packet for `conn` is in the guest's hands.
    mutating func sent(_ header: VsockHeader, for conn: VsockConnection) {
        conn.lastSentFwdCnt = header.fwdCnt
        if header.op == VsockOp.creditUpdate.rawValue {
            conn.creditUpdateQueued = false
            conn.creditUpdateForced = false
        }
    }

    /// The held chain, else the next available one; nil when the guest has
    /// given none. Malformed chains go back empty.
    mutating func takeRxChain(_ queue: Virtqueue) throws(VirtqueueError) -> DescriptorChain? {
        if let held = heldRx {
            heldRx = nil
            return held.chain
        }
        return try queue.popOrEnableNotification(onMalformed: { rxPushed = true })
    }

    /// Reads the socket into one rx buffer, behind a RW header.
    mutating func readSocket(_ conn: VsockConnection, _ queue: Virtqueue) throws(VirtqueueError) -> ReadOutcome {
        guard conn.readsHost else { return .drained }
        let credit = Int(conn.peerCredit)
        guard credit > 0 else {
            if !conn.creditRequested {
                conn.creditRequested = true
                enqueue(.creditRequest(conn.tag))
            }
            return .stalled
        }
        var chain: DescriptorChain
        while true {
            guard let c = try takeRxChain(queue) else { return .noBuffer }
            if c.writableLength > VirtioVsock.headerSize {
                chain = c
                break
            }
            // No room for a header and a byte: give it back unused.
            try queue.pushUsed(head: c.head, length: 0)
            rxPushed = true
        }
        let count = min(chain.writableLength - VirtioVsock.headerSize, credit, VirtioVsock.maxPayload)
        let memory = queue.memory
        let fd = conn.fd
        var n: Int = -1
        var failure: Int32 = 0
        do {
            // SAFETY: one iovec per writable buffer at most, each a view checked by the chain, living only inside
            // this call.
            unsafe try withUnsafeTemporaryAllocation(of: iovec.self, capacity: chain.writableCount) { iovs throws(VirtqueueError) in
                var used = 0
                unsafe try chain.forEachSegment(in: memory, deviceWritable: true, offset: VirtioVsock.headerSize, count: count) { view in
                    // SAFETY: at most one view per writable buffer; checked anyway.
                    precondition(used < iovs.count)
                    unsafe iovs[used] = unsafe iovec(iov_base: view.baseAddress, iov_len: view.count)
                    used += 1
                }
                n = retryingEINTR { unsafe readv(fd, iovs.baseAddress, Int32(used)) }
                if n < 0 { failure = errno }
            }
        } catch {
            // Cannot happen for a popped chain (its buffers were checked); give it back.
            try queue.pushUsed(head: chain.head, length: 0)
            rxPushed = true
            return .delivered
        }
        if n > 0, let header = conn.header(op: .rw, guestCID: guestCID, len: UInt32(n)) {
            conn.txCnt &+= UInt32(n)
            // SAFETY: the header's bytes, lent for the call; the chain write checks the guest's side.
            let wrote = unsafe header.bytes.withUnsafeBytes { unsafe (try? chain.write(to: memory, offset: 0, from: $0)) != nil }
            try queue.pushUsed(head: chain.head, length: wrote ? UInt32(VirtioVsock.headerSize + n) : 0)
            rxPushed = true
            sent(header, for: conn)
            return .delivered
        }
        heldRx = (queue, chain) // unused: the next packet takes it
        if n < 0 && failure == EAGAIN { return .drained }
        if n == 0 && !conn.hostHungUp && !conn.shutWrDone {
            // EOF: the host sends no more; it may still receive.
            conn.hostEOF = true
            enqueue(.shutdownSend(conn.tag))
            updateInterest(conn)
        } else {
            // EOF after a hang-up or after our own SHUT_WR (both directions
            // done), or a read error: the connection is over.
            conn.hostEOF = true
            resetConnection(conn)
        }
        return .finished
    }

    // MARK: - Event queue

    mutating func serveEvent(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        var pushed = false
        while transportResetPending, let chain = try queue.popServable(returnedMalformed: { pushed = true }) {
            let event = VirtioVsock.eventTransportReset.littleEndian
            // SAFETY: the event's bytes, lent for the call; the chain write checks the guest's side.
            let wrote = unsafe withUnsafeBytes(of: event) { unsafe (try? chain.write(to: queue.memory, offset: 0, from: $0)) != nil }
            try queue.pushUsed(head: chain.head, length: wrote ? UInt32(VirtioVsock.eventSize) : 0)
            pushed = true
            if wrote { transportResetPending = false }
        }
        return pushed && queue.needsInterrupt()
    }
}
