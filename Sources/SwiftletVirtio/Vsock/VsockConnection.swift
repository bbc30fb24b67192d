import Glibc
import SwiftletSys

/// A connection's address pair as the device sees it: our (host) port and
/// the guest's port. Unique among live connections.
struct VsockConnectionKey: Hashable {
    /// The host side's port: the guest's destination port for guest-initiated
    /// connections, an allocated port for host-initiated ones.
    var local: UInt32
    /// The guest side's port.
    var peer: UInt32
}

/// One host Unix socket and its vsock stream: the state machine and the
/// credit accounting (virtio 1.2, section 5.10.6.3).
///
/// Credit, in both directions, with wrapping 32-bit counters:
/// - guest to host: we advertise `buf_alloc` = `VirtioVsock.bufferSize` and
///   `fwd_cnt` = bytes written to the socket. The guest may have at most
///   `buf_alloc` bytes in flight, so what we buffer (`rxCnt - fwdCnt`) is
///   bounded; a guest that sends more is reset.
/// - host to guest: we send at most `peerBufAlloc - (txCnt - peerFwdCnt)`
///   bytes beyond what the guest has consumed, from the values in its latest packet.
///
/// The socket I/O lives in `VsockMuxer`; this type holds the state and the
/// decisions that depend only on it.
final class VsockConnection {
    enum State: Equatable {
        /// A host client connected to the listener; the bytes of its
        /// `CONNECT <port>\n` line so far.
        case awaitingConnectLine([UInt8])
        /// Host-initiated: our REQUEST is queued or sent; waiting for the
        /// guest's RESPONSE (or RST: nothing listens there).
        case requested
        /// Data may flow, as far as the shutdown flags allow.
        case established
    }

    /// The epoll tag of the socket; never reused.
    let tag: UInt64
    /// The host Unix socket: closed by `close` or deinit.
    private var socket: OwnedFD?
    /// The socket's descriptor; -1 once closed.
    var fd: Int32 { socket?.raw ?? -1 }
    var state: State
    /// Nil while awaiting the CONNECT line.
    var key: VsockConnectionKey?
    /// Whether the host side connected to us (hybrid CONNECT) rather than the guest.
    let hostInitiated: Bool
    /// CLOCK_MONOTONIC ns by which a handshake must be done (the client's
    /// CONNECT line, then the guest's answer); 0 when there is none.
    var deadline: UInt64 = 0

    // MARK: Credit

    /// The guest's receive buffer and consumed count, from its latest packet.
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    /// Payload bytes sent to the guest.
    var txCnt: UInt32 = 0
    /// Payload bytes received from the guest.
    var rxCnt: UInt32 = 0
    /// Of those, bytes written to the socket (our `fwd_cnt`).
    var fwdCnt: UInt32 = 0
    /// The `fwd_cnt` in the last packet we put on the rx queue.
    var lastSentFwdCnt: UInt32 = 0

    // MARK: Buffers and shutdown

    /// What the socket has not taken yet: the OK line (first `controlPrefix`
    /// bytes) and guest data.
    var writeBuffer = VsockByteQueue()
    var controlPrefix = 0
    /// The guest sent SHUTDOWN with RCV: it takes no more data.
    var guestShutRecv = false
    /// The guest sent SHUTDOWN with SEND: it sends no more data.
    var guestShutSend = false
    /// The guest shut both directions while data was still buffered: close
    /// (and RST) once the buffer drains.
    var closeWhenDrained = false
    /// We read EOF from the socket (and told the guest with SHUTDOWN(SEND)).
    var hostEOF = false
    /// The socket hung up: nothing more can be written; what is unread can still be read.
    var hostHungUp = false
    /// We did `shutdown(SHUT_WR)` on the socket after the guest's SHUTDOWN(SEND).
    var shutWrDone = false

    // MARK: Muxer bookkeeping

    /// The epoll mask currently registered.
    var interest: UInt32 = 0
    /// Whether the socket is in the epoll set (no longer once it hung up).
    var registered = false
    /// In the muxer's list of sockets to read into rx buffers.
    var inRxReady = false
    /// A CREDIT_UPDATE is queued; `creditUpdateForced`: the guest asked for it.
    var creditUpdateQueued = false
    var creditUpdateForced = false
    /// A CREDIT_REQUEST is queued or sent since the guest last gave credit.
    var creditRequested = false

    init(tag: UInt64, socket: consuming OwnedFD, state: State, key: VsockConnectionKey?, hostInitiated: Bool) {
        self.tag = tag
        self.socket = Optional(socket)
        self.state = state
        self.key = key
        self.hostInitiated = hostInitiated
    }

    /// Closes the socket. Idempotent.
    func close() { socket = nil }

    var isClosed: Bool { socket == nil }

    /// Bytes we may still send the guest.
    var peerCredit: UInt32 {
        // A guest claiming to have consumed more than we sent gets no credit.
        let inFlight = txCnt &- peerFwdCnt
        return inFlight >= peerBufAlloc ? 0 : peerBufAlloc - inFlight
    }

    /// Guest data held here, not yet written to the socket.
    var bufferedGuestBytes: UInt32 { rxCnt &- fwdCnt }

    /// Takes the guest's credit from any packet it sends. Returns whether the
    /// guest now has credit it did not have.
    @discardableResult
    func recordPeerCredit(_ h: VsockHeader) -> Bool {
        let before = peerCredit
        peerBufAlloc = h.bufAlloc
        peerFwdCnt = h.fwdCnt
        let opened = before == 0 && peerCredit > 0
        if peerCredit > 0 { creditRequested = false }
        return opened
    }

    /// Whether the guest may send `count` more bytes without exceeding the
    /// buffer we advertised.
    func canAccept(_ count: Int) -> Bool {
        Int(bufferedGuestBytes) + count <= Int(VirtioVsock.bufferSize)
    }

    /// Whether our `fwd_cnt` moved far enough since the guest last heard it
    /// that a CREDIT_UPDATE is due (the guest may be waiting for credit).
    var creditUpdateDue: Bool { fwdCnt &- lastSentFwdCnt >= VirtioVsock.creditUpdateThreshold }

    /// Whether the socket should still be read for the guest.
    var readsHost: Bool {
        state == .established && !hostEOF && !guestShutRecv && !closeWhenDrained
    }

    /// Whether both directions are finished: the connection is over.
    var bothDirectionsDone: Bool { hostEOF && shutWrDone }

    /// The epoll interest this state calls for. EPOLLIN only while reading
    /// is possible and useful (credit, not already queued for reading), so a
    /// socket the guest cannot take data from never wakes the loop.
    var desiredInterest: UInt32 {
        switch state {
        case .awaitingConnectLine: return Epoll.readable
        case .requested: return 0 // HUP and ERR are reported regardless
        case .established:
            var events: UInt32 = 0
            if readsHost && !inRxReady && peerCredit > 0 { events |= Epoll.readable }
            if !writeBuffer.isEmpty { events |= Epoll.writable }
            return events
        }
    }

    /// A header from us for this connection, carrying our current credit.
    func header(op: VsockOp, guestCID: UInt32, len: UInt32 = 0, flags: UInt32 = 0) -> VsockHeader? {
        guard let key else { return nil }
        return VsockHeader(srcCID: VirtioVsock.hostCID, dstCID: UInt64(guestCID), srcPort: key.local, dstPort: key.peer,
                           len: len, op: op, flags: flags, bufAlloc: VirtioVsock.bufferSize, fwdCnt: fwdCnt)
    }
}
