import CSwiftlet
import Glibc
import Synchronization
import SwiftletMemory
import SwiftletSys

/// The virtio-vsock device's backend: guest stream connections multiplexed
/// onto host Unix sockets, compatible with Firecracker's hybrid vsock.
///
/// - Host to guest: a client connects to `udsPath` and sends
///   `CONNECT <port>\n`; the guest gets a REQUEST for that port; on its
///   RESPONSE the client reads `OK <host port>\n` and the stream follows; on
///   its RST (nothing listens) the client's socket is closed.
/// - Guest to host: a REQUEST to CID 2 port P connects to the Unix socket
///   `<udsPath>_<P>`; RESPONSE on success, RST when nothing listens there.
///
/// Wiring: the device event loop watches `pollFD` and calls `process()` when
/// it is readable, then serves the rx queue; queue notifications call
/// `serveTx`, `serveRx` and `serveEvent`. `pollFD` also turns readable when
/// serving tx queued packets for the guest (RESPONSE, RST, credit updates),
/// so the rx queue gets served without the tx path touching it.
///
/// Everything from the guest is hostile: malformed packets are dropped or
/// answered with RST, guest data beyond the advertised buffer resets the
/// connection, and nothing the guest sends can make the device buffer
/// without bound or spin. Thread-safe: one lock serialises all calls (the
/// event loop thread serves; a vCPU thread may reset).
///
/// The connections, queues and sockets are a `VsockMuxState` inside one
/// `Mutex`, which every entry point takes.
public final class VsockMuxer: Sendable {
    /// The guest's CID (config space `guest_cid`).
    public let guestCID: UInt32
    /// The listener's path; guest-initiated connections go to `<udsPath>_<port>`.
    public let udsPath: String
    /// Who may connect to the listener, and which `<udsPath>_<port>`
    /// listeners the guest may reach (SO_PEERCRED); others are turned away.
    public let peers: PeerPolicy

    /// Counters for tests and statistics.
    public struct Statistics: Sendable, Equatable {
        /// Live connections, including host clients still sending their CONNECT line.
        public var connections = 0
        /// Guest data held for sockets that have not taken it, over all connections.
        public var bufferedGuestBytes = 0
        /// The most guest data held for any one connection.
        public var maxBufferedGuestBytes = 0
        /// Packets waiting for an rx buffer (control packets; data is read on demand).
        public var queuedPackets = 0
        /// Guest packets dropped without an answer (short header, foreign source CID).
        public var droppedPackets = 0
        /// RST packets queued for the guest.
        public var resetsSent = 0
        /// Connections whose sockets are waiting to be read into rx buffers.
        public var readyToRead = 0
        /// Times the driver reset the device (wrote 0 to its status).
        public var driverResets = 0
        /// Host clients dropped because their handshake ran out of time.
        public var handshakesTimedOut = 0
        /// Host clients in their handshake now.
        public var handshakes = 0
    }

    /// Everything that changes, behind one lock: the event loop thread
    /// serves, and a vCPU thread may reset.
    let state: Mutex<VsockMuxState>
    /// The epoll fd to watch for readability; then call `process()`.
    public let pollFD: Int32

    /// Epoll tag of the listener; connection tags count up from 1.
    static let listenerTag: UInt64 = 0

    /// Stop taking tx packets while this many packets wait for rx buffers:
    /// a guest that sends without receiving is throttled, not buffered.
    static let maxPendingPackets = 512

    /// Listens at `udsPath`, admitting `peers`. Fails with `.inUse` when something listens there
    /// already, `.notASocket` when the path is some other file; a stale socket
    /// file is replaced.
    public init(guestCID: UInt32, udsPath: String, peers: PeerPolicy = .anyone) throws(VsockError) {
        guard VirtioVsock.isValidGuestCID(guestCID) else { throw .invalidCID(guestCID) }
        // On failure, the listener's deinit removes the socket file again.
        let listener = try VsockListener(path: udsPath)
        let poller: VsockPoller
        do {
            poller = try VsockPoller(watching: listener.fd, tag: Self.listenerTag)
        } catch {
            throw .system(error)
        }
        self.guestCID = guestCID
        self.udsPath = udsPath
        self.peers = peers
        pollFD = poller.epoll.fd
        state = Mutex(VsockMuxState(guestCID: guestCID, udsPath: udsPath, peers: peers, poller: poller, listener: listener))
    }

    deinit { close() }

    /// The features offered: VERSION_1 only (stream sockets).
    public var deviceFeatures: UInt64 { VirtioFeature.version1 }

    /// Reads config space bytes at `offset` (le64 `guest_cid`); bytes past its end read as 0.
    public func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) {
        let config = VirtioVsock.configSpace(guestCID: guestCID)
        for i in 0..<into.count {
            let (at, overflow) = offset.addingReportingOverflow(i)
            // SAFETY: `i` comes from `into.indices`.
            unsafe into[i] = !overflow && at >= 0 && at < config.count ? config[at] : 0
        }
    }

    /// Handles ready sockets: accepts clients, reads CONNECT lines, flushes
    /// pending writes, notes sockets with data for the guest and hang-ups.
    /// Never blocks. Serve the rx queue afterwards to deliver what it queued.
    public func process() {
        state.withLock { $0.processEvents() }
    }

    /// Takes the guest's packets from the tx queue. Returns whether the driver
    /// wants an interrupt. Throws only when the queue itself is unusable.
    public func serveTx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        try state.withLock { s throws(VirtqueueError) in try s.serveTx(queue) }
    }

    /// Fills rx buffers: queued packets first, then data read straight from
    /// the sockets into the buffers, within each connection's credit.
    public func serveRx(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        try state.withLock { s throws(VirtqueueError) in try s.serveRx(queue) }
    }

    /// Delivers a pending TRANSPORT_RESET event, if there is one and a buffer.
    public func serveEvent(_ queue: Virtqueue) throws(VirtqueueError) -> Bool {
        try state.withLock { s throws(VirtqueueError) in try s.serveEvent(queue) }
    }

    /// Whether the tx queue needs serving again: `serveTx` stopped while too
    /// many packets waited for rx buffers, and there is room again.
    public var txNeedsService: Bool {
        state.withLock { $0.txStalled && $0.pending.count < Self.maxPendingPackets }
    }

    /// The driver reset the device: every connection is closed (host clients
    /// see their sockets close) and everything queued is dropped. Called on a
    /// vCPU thread: no system call here but the wake eventfd's write; the
    /// sockets close on the loop thread.
    public func reset() {
        state.withLock { s in
            s.dropAllConnections()
            s.transportResetPending = false
            s.heldRx = nil
            s.txStalled = false
            s.stats.driverResets += 1
        }
    }

    /// Drops every connection and queues VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    /// for the guest, which then resets all its sockets (after a snapshot
    /// restore, say). Serve the event queue to deliver it.
    public func transportReset() {
        state.withLock { s in
            s.dropAllConnections()
            s.transportResetPending = true
        }
    }

    /// Closes every connection and the listener, and removes the socket
    /// file. Idempotent; deinit does it too.
    public func close() {
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            s.dropAllConnections()
            s.closeRetired()
            s.heldRx = nil
            s.listener.close()
        }
    }

    /// Current counters.
    public var statistics: Statistics {
        state.withLock { m in
            var s = m.stats
            s.connections = m.byTag.count
            s.queuedPackets = m.pending.count
            s.readyToRead = m.rxReady.count
            s.handshakes = m.handshakes.count
            s.bufferedGuestBytes = 0
            s.maxBufferedGuestBytes = 0
            for c in m.byTag.values {
                let b = Int(c.bufferedGuestBytes)
                s.bufferedGuestBytes += b
                s.maxBufferedGuestBytes = max(s.maxBufferedGuestBytes, b)
            }
            return s
        }
    }
}

/// A `VsockMuxer`'s mutable half, only ever reached through its `Mutex`:
/// the connection tables, what waits for the guest, and the sockets' epoll.
struct VsockMuxState: ~Copyable {
    let guestCID: UInt32
    let udsPath: String
    let peers: PeerPolicy
    let poller: VsockPoller
    let listener: VsockListener
    var nextTag: UInt64 = 1
    var byTag: [UInt64: VsockConnection] = [:]
    var byKey: [VsockConnectionKey: VsockConnection] = [:]
    /// Local ports of host-initiated connections.
    var hostPorts: Set<UInt32> = []
    var nextHostPort = VirtioVsock.firstHostPort
    /// Whether the listener's EPOLLIN is off (accept ran out of fds).
    var listenerPaused = false
    /// Tags of host clients in their handshake, each with a deadline; the
    /// poller's timer ticks while there are any.
    var handshakes: Set<UInt64> = []
    var ticking = false

    /// Packets for the guest, waiting for rx buffers, in order.
    var pending = VsockPacketQueue()
    /// Connections whose sockets have data (or EOF) for the guest, in turn.
    var rxReady: [UInt64] = []
    /// An rx chain popped but not used (the socket had nothing after all),
    /// with the queue it came from: the next packet goes into it.
    var heldRx: (queue: Virtqueue, chain: DescriptorChain)?
    /// Counts packets queued and sockets marked readable: serveTx wakes the
    /// loop only when it added rx work.
    var rxWorkQueued = 0
    /// Whether `serveRx` pushed anything (for its interrupt decision).
    var rxPushed = false
    /// serveTx stopped taking packets because `pending` is full.
    var txStalled = false
    /// A TRANSPORT_RESET event waits for an event buffer.
    var transportResetPending = false
    var closed = false
    var stats = VsockMuxer.Statistics()
    /// Connections a reset took from the device, whose sockets are not closed
    /// yet: a driver reset runs on a vCPU thread, whose seccomp role allows
    /// no `close` or `epoll_ctl`, so the loop thread closes them, first thing
    /// in `processEvents` (the reset wakes it).
    var retired: [VsockConnection] = []

    init(guestCID: UInt32, udsPath: String, peers: PeerPolicy, poller: consuming VsockPoller, listener: VsockListener) {
        self.guestCID = guestCID
        self.udsPath = udsPath
        self.peers = peers
        self.poller = poller
        self.listener = listener
    }

    // MARK: - Socket events 

    /// One batch of ready events. Level-triggered: whatever is left makes
    /// `pollFD` readable again, so the loop comes back.
    mutating func processEvents() {
        guard !closed else { return }
        closeRetired()
        for (events, tag) in poller.poll(max: 64) {
            switch tag {
            case VsockPoller.wakeTag: poller.drainWake()
            case VsockPoller.timerTag:
                poller.drainTimer()
                expireHandshakes()
            case VsockMuxer.listenerTag: acceptClients()
            default:
                guard let conn = byTag[tag] else { continue }
                socketEvent(conn, events)
            }
        }
    }

    /// Accepts waiting host clients (a bounded number per call).
    mutating func acceptClients() {
        for _ in 0..<16 {
            let client: OwnedFD
            do {
                guard let c = try UnixSocket.accept(listener.fd) else { return }
                client = c
            } catch {
                // Out of fds (EMFILE/ENFILE) leaves the listener readable: stop
                // watching it until a connection closes, rather than spin.
                listenerPaused = true
                try? poller.modify(listener.fd, events: 0, tag: VsockMuxer.listenerTag)
                return
            }
            // Too many connections or handshakes, a guest that takes no
            // packets, or a peer the policy refuses: the client is turned
            // away (closed here).
            guard byTag.count < VirtioVsock.maxConnections, handshakes.count < VirtioVsock.maxHandshakes,
                  pending.count < VsockMuxer.maxPendingPackets, peers.admits(client.raw) else { continue }
            let conn = VsockConnection(tag: allocateTag(), socket: client, state: .awaitingConnectLine([]),
                                       key: nil, hostInitiated: true)
            guard register(conn) else { continue }
            startHandshake(conn)
        }
    }

    mutating func allocateTag() -> UInt64 {
        defer { nextTag += 1 }
        return nextTag
    }

    /// Adds `conn` to the epoll set and the tag table; false (and closed) on failure.
    mutating func register(_ conn: VsockConnection) -> Bool {
        let events = conn.desiredInterest
        do {
            try poller.add(conn.fd, events: events, tag: conn.tag)
        } catch {
            conn.close()
            return false
        }
        conn.interest = events
        conn.registered = true
        byTag[conn.tag] = conn
        if let key = conn.key { byKey[key] = conn }
        return true
    }

    mutating func socketEvent(_ conn: VsockConnection, _ events: UInt32) {
        switch conn.state {
        case .awaitingConnectLine:
            readConnectLine(conn)
        case .requested:
            // Only hang-ups and errors arrive here: the client left before
            // the guest answered. Tell the guest the connection is gone.
            if events & (Epoll.hangup | Epoll.error) != 0 { resetConnection(conn) }
        case .established:
            if events & Epoll.error != 0 {
                resetConnection(conn)
                return
            }
            if events & Epoll.writable != 0 {
                flush(conn)
                if conn.isClosed { return }
            }
            if events & Epoll.hangup != 0 {
                hostHungUp(conn)
            } else if events & Epoll.readable != 0 {
                markReadable(conn)
            }
            if !conn.isClosed { updateInterest(conn) }
        }
    }

    /// Reads what there is of the CONNECT line without taking any byte past
    /// its newline (the stream after it belongs to the guest), then acts on it.
    mutating func readConnectLine(_ conn: VsockConnection) {
        guard case var .awaitingConnectLine(line) = conn.state else { return }
        let room = VirtioVsock.maxConnectLine - line.count
        guard room > 0 else { return close(conn) }
        var peek = [UInt8](repeating: 0, count: room)
        // SAFETY: `room` is the buffer's size; recv writes at most that.
        var n = unsafe peek.withUnsafeMutableBytes { p in retryingEINTR { unsafe recv(conn.fd, p.baseAddress, room, Int32(MSG_PEEK)) } }
        if n < 0 && errno == EAGAIN { return }
        guard n > 0 else { return close(conn) } // EOF or error before a full line
        if let newline = peek[0..<n].firstIndex(of: UInt8(ascii: "\n")) { n = newline + 1 }
        let taken = unsafe peek.withUnsafeMutableBytes { unsafe recv(conn.fd, $0.baseAddress, n, 0) }
        guard taken == n else { return close(conn) }
        line += peek[0..<n]
        switch VsockConnectLine.parse(line) {
        case .incomplete: conn.state = .awaitingConnectLine(line)
        case .invalid: close(conn)
        case let .port(port): requestGuestConnection(conn, port: port)
        }
    }

    /// A host client asked for guest port `port`: send the guest a REQUEST
    /// from a fresh local port, and wait for its answer.
    mutating func requestGuestConnection(_ conn: VsockConnection, port: UInt32) {
        var local = nextHostPort
        while hostPorts.contains(local) || byKey[VsockConnectionKey(local: local, peer: port)] != nil {
            local = local == UInt32.max ? VirtioVsock.firstHostPort : local + 1
        }
        nextHostPort = local == UInt32.max ? VirtioVsock.firstHostPort : local + 1
        let key = VsockConnectionKey(local: local, peer: port)
        conn.key = key
        conn.state = .requested
        byKey[key] = conn
        hostPorts.insert(local)
        updateInterest(conn)
        enqueue(.request(conn.tag))
    }

    /// The socket has data (or EOF) for the guest: read it when rx buffers
    /// are served, and stop watching EPOLLIN until then.
    mutating func markReadable(_ conn: VsockConnection) {
        guard conn.readsHost, !conn.inRxReady else { return }
        conn.inRxReady = true
        rxReady.append(conn.tag)
        rxWorkQueued &+= 1
    }

    /// The socket hung up: nothing more can be written to it. What it still
    /// holds goes to the guest (credit permitting), then the guest gets RST.
    mutating func hostHungUp(_ conn: VsockConnection) {
        conn.hostHungUp = true
        conn.writeBuffer.removeAll()
        conn.controlPrefix = 0
        // HUP is reported whatever the interest mask: leave the epoll set,
        // or a socket waiting for credit would wake the loop for ever.
        poller.remove(conn.fd)
        conn.registered = false
        conn.interest = 0
        if conn.readsHost {
            if conn.peerCredit > 0 { markReadable(conn) }
        } else {
            resetConnection(conn)
        }
    }

    /// Re-registers the epoll interest the connection's state calls for.
    mutating func updateInterest(_ conn: VsockConnection) {
        guard !conn.isClosed else { return }
        if !conn.registered {
            // Hung up: no epoll; the socket is read whenever credit allows.
            if conn.hostHungUp && conn.readsHost && conn.peerCredit > 0 { markReadable(conn) }
            return
        }
        let events = conn.desiredInterest
        guard events != conn.interest else { return }
        do {
            try poller.modify(conn.fd, events: events, tag: conn.tag)
            conn.interest = events
        } catch {
            resetConnection(conn)
        }
    }

    // MARK: - Writing to the socket 

    /// sendmsg without SIGPIPE; the count written, 0 when the socket is full,
    /// or nil when it failed for good.
    mutating func send(_ fd: Int32, _ iovs: UnsafeMutableBufferPointer<iovec>) -> Int? {
        // SAFETY: the message points at the caller's iovecs for this one sendmsg.
        var msg = unsafe msghdr()
        unsafe msg.msg_iov = iovs.baseAddress
        unsafe msg.msg_iovlen = iovs.count
        let n = retryingEINTR { unsafe sendmsg(fd, &msg, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        if n >= 0 { return n }
        return errno == EAGAIN ? 0 : nil
    }

    /// Writes as much of the buffer as the socket takes; then, once it is
    /// empty, carries out a pending shutdown.
    mutating func flush(_ conn: VsockConnection) {
        while !conn.writeBuffer.isEmpty {
            let fd = conn.fd
            // SAFETY: the iovec points at the buffer's bytes for this one send.
            let written: Int? = unsafe conn.writeBuffer.withBytes { bytes in
                var iov = unsafe iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                return unsafe withUnsafeMutablePointer(to: &iov) { unsafe send(fd, UnsafeMutableBufferPointer(start: $0, count: 1)) }
            }
            guard let n = written else { return resetConnection(conn) }
            if n == 0 { break }
            conn.writeBuffer.consume(n)
            let control = min(n, conn.controlPrefix)
            conn.controlPrefix -= control
            conn.fwdCnt &+= UInt32(n - control)
        }
        afterWrite(conn)
    }

    /// After guest data moved to the socket: shutdowns that waited for the
    /// buffer to drain, and a credit update when one is due.
    mutating func afterWrite(_ conn: VsockConnection) {
        if conn.writeBuffer.isEmpty {
            if conn.closeWhenDrained { return resetConnection(conn) }
            if conn.guestShutSend && !conn.shutWrDone {
                _ = Glibc.shutdown(conn.fd, Int32(SHUT_WR))
                conn.shutWrDone = true
                if conn.bothDirectionsDone { return resetConnection(conn) }
            }
        }
        if conn.creditUpdateDue { enqueueCreditUpdate(conn, forced: false) }
        updateInterest(conn)
    }

    // MARK: - Connection end 

    /// Ends the connection with an RST to the guest (when the guest knows it)
    /// and closes the socket.
    mutating func resetConnection(_ conn: VsockConnection) {
        if case .awaitingConnectLine = conn.state {
            // A client still sending its line: the guest never heard of it.
        } else if let h = conn.header(op: .rst, guestCID: guestCID) {
            enqueue(.raw(h))
        }
        close(conn)
    }

    /// Closes the socket and forgets the connection; queued packets for it are skipped.
    mutating func close(_ conn: VsockConnection) {
        forget(conn)
        release(conn)
    }

    // MARK: - Handshake deadlines 

    /// The client's CONNECT line, then the guest's answer, must come within
    /// the handshake timeout from its accept.
    mutating func startHandshake(_ conn: VsockConnection) {
        conn.deadline = Clock.monotonicNanos() &+ VirtioVsock.handshakeTimeoutNanos
        handshakes.insert(conn.tag)
        if !ticking {
            ticking = true
            poller.tick(every: VirtioVsock.deadlineTickNanos)
        }
    }

    /// The handshake is over (established, or the connection gone).
    mutating func endHandshake(_ conn: VsockConnection) {
        conn.deadline = 0
        handshakes.remove(conn.tag)
    }

    /// Drops the clients whose handshake ran out of time: one still sending
    /// its line is closed; one whose REQUEST the guest never answered is
    /// reset (the guest gets RST for it too). The timer stops when none is left.
    mutating func expireHandshakes() {
        let now = Clock.monotonicNanos()
        for tag in handshakes {
            guard let conn = byTag[tag] else { handshakes.remove(tag); continue }
            guard conn.deadline <= now else { continue }
            stats.handshakesTimedOut += 1
            resetConnection(conn)
        }
        if handshakes.isEmpty && ticking {
            ticking = false
            poller.tick(every: 0)
        }
    }

    /// Takes the connection out of the device's tables (no system call).
    private mutating func forget(_ conn: VsockConnection) {
        endHandshake(conn)
        conn.inRxReady = false
        byTag[conn.tag] = nil
        if let key = conn.key, byKey[key] === conn {
            byKey[key] = nil
            if conn.hostInitiated { hostPorts.remove(key.local) }
        }
    }

    /// Closes a forgotten connection's socket; a listener that ran out of
    /// descriptors is watched again.
    private mutating func release(_ conn: VsockConnection) {
        if conn.registered { poller.remove(conn.fd) }
        conn.registered = false
        conn.close()
        if listenerPaused {
            listenerPaused = false
            try? poller.modify(listener.fd, events: Epoll.readable, tag: VsockMuxer.listenerTag)
        }
    }

    /// Forgets every connection and everything queued; the sockets close on
    /// the loop thread (`closeRetired`), which the wake brings round.
    mutating func dropAllConnections() {
        let all = Array(byTag.values)
        for conn in all { forget(conn) }
        retired += all
        pending.removeAll()
        rxReady.removeAll()
        if !retired.isEmpty { poller.signalWake() }
    }

    mutating func closeRetired() {
        guard !retired.isEmpty else { return }
        for conn in retired { release(conn) }
        retired.removeAll()
    }

    // MARK: - Packets for the guest 

    mutating func enqueue(_ packet: VsockPacketQueue.Packet) {
        if case let .raw(h) = packet, h.op == VsockOp.rst.rawValue { stats.resetsSent += 1 }
        pending.append(packet)
        rxWorkQueued &+= 1
    }

    mutating func enqueueCreditUpdate(_ conn: VsockConnection, forced: Bool) {
        if forced { conn.creditUpdateForced = true }
        guard !conn.creditUpdateQueued else { return }
        conn.creditUpdateQueued = true
        enqueue(.creditUpdate(conn.tag))
    }

    /// Answers a guest packet that has no connection with RST (never an RST with an RST).
    mutating func replyReset(_ h: VsockHeader) {
        guard h.op != VsockOp.rst.rawValue else { return }
        enqueue(.raw(h.resetReply()))
    }
}
