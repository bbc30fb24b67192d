import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// How a session ended.
public enum SessionOutcome: Sendable {
    /// The job ran and ended this way.
    case finished(JobStatus)
    /// The job ran past its time limit and was abandoned.
    case timedOut
    /// A termination signal stopped the run before the job reported an exit.
    case interrupted(signal: Int32)
    /// The machine ended, or the session was stopped, before the job finished.
    case abandoned
    /// The agent failed or broke the protocol.
    case failed(SandboxError)
    /// The agent reported it was idle and the session, in park mode, ended
    /// there without sending a job (`swiftlet snapshot create`).
    case parked
}

/// Host-clock timestamps of a session (CLOCK_MONOTONIC ns), 0 when not reached.
public struct SessionTimeline: Sendable {
    public var agentConnected: UInt64 = 0
    public var jobStarted: UInt64 = 0
    public var firstOutput: UInt64 = 0
    public var jobExited: UInt64 = 0
    /// The agent's own start and connect times, on the guest's clock.
    public var guestAgentStart: UInt64 = 0
    public var guestAgentConnected: UInt64 = 0
    /// The job's fork and end, on the guest's clock.
    public var guestJobStart: UInt64 = 0
    public var guestJobEnd: UInt64 = 0
    /// When the agent parked for a snapshot, on the guest's clock.
    public var guestParked: UInt64 = 0
}

/// The host end of one agent connection: sends the job, pumps stdin to the
/// guest and the guest's stdout and stderr to host descriptors, and reports
/// the exit.
///
/// Runs on its own pthread, polling: the listener (until the agent
/// connects), the connection, stdin, a termination signalfd and a stop
/// eventfd. The connection is non-blocking with an output queue, so a guest
/// that stops reading stdin never stops this side from draining its output.
/// The session thread's own state is a `SessionLoop`.
///
/// `@unchecked Sendable`: `thread` is set by `start` and joined by `stop` on
/// the caller's thread; `parkedConnection` is written by the session thread
/// before it ends and read by `stop` after the join; the rest is immutable or
/// in `state`.
public final class AgentSession: @unchecked Sendable {
    public struct Options: Sendable {
        /// Listening socket the agent's connection arrives on (borrowed).
        public var listener: Int32
        /// Where the job's stdin comes from, when attached.
        public var stdinFD: Int32 = 0
        public var stdoutFD: Int32 = 1
        public var stderrFD: Int32 = 2
        /// A signalfd for SIGINT/SIGTERM/SIGHUP, or -1.
        public var signalFD: Int32 = -1
        /// The job's time limit, counted from its start.
        public var timeoutSeconds: Double?
        /// How long the agent may take to connect.
        public var connectTimeoutSeconds: Double?
        /// How long a job may take to die after a forwarded signal before it is abandoned.
        public var signalGraceSeconds: Double = 2
        /// Park mode: send PARK with these warm-up programs instead of the
        /// job, and end with `.parked` when the agent answers PARKED.
        public var park: [String]?
        /// Who may be the agent's end: by default this process only (its own
        /// vsock device connects to the listener). A connection from anyone
        /// else is closed unread, and the session goes on waiting.
        public var peers: PeerPolicy = .thisProcess

        public init(listener: Int32) { self.listener = listener }
    }

    let job: AgentJob
    let options: Options
    /// Called once, on the session thread, when the outcome is known.
    let onOutcome: @Sendable (SessionOutcome) -> Void
    let stopEvent: EventFD
    /// Signals handed in by `deliver(signal:)`, 4 bytes each (non-blocking).
    let injected: Pipe
    private var thread: pthread_t?
    /// The agent's connection when a parked session ended; written by the
    /// session thread before it ends, closed by `stop` after joining it.
    fileprivate var parkedConnection: AgentConnection?
    /// The job's stdout and stderr on their way out (the session thread's;
    /// made here, before any filter, as they may reopen the descriptors).
    let stdoutSink: OutputSink
    let stderrSink: OutputSink
    private let state = Mutex<(outcome: SessionOutcome?, timeline: SessionTimeline)>((nil, SessionTimeline()))

    public init(job: AgentJob, options: Options, onOutcome: @escaping @Sendable (SessionOutcome) -> Void) throws(SandboxError) {
        try job.validate()
        self.job = job
        self.options = options
        self.onOutcome = onOutcome
        stdoutSink = OutputSink(fd: options.stdoutFD)
        stderrSink = OutputSink(fd: options.stderrFD)
        do {
            stopEvent = try EventFD()
            injected = try Pipe(flags: O_NONBLOCK)
        } catch {
            throw .system(error)
        }
    }

    deinit { stop() }

    /// Handles `signo` as if it had arrived on the signalfd: forwarded to a
    /// running job, or the end of the session before it runs (for callers
    /// that take signals some other way, and tests).
    public func deliver(signal signo: Int32) {
        var v = signo
        _ = write(injected.write.raw, &v, 4)
    }

    /// The outcome, once known.
    public var outcome: SessionOutcome? { state.withLock { $0.outcome } }
    public var timeline: SessionTimeline { state.withLock { $0.timeline } }

    public func start() throws(SandboxError) {
        do {
            thread = try spawnThread(name: "agent") { [self] in
                var loop = SessionLoop(session: self)
                loop.run()
                // Parked, the connection stays open until `stop`, after the
                // machine paused: the guest must not see it close before its snapshot.
                if options.park != nil { parkedConnection = loop.connection }
                drainOutput()
            }
        } catch {
            throw .system(error)
        }
    }

    /// Asks the session to end (after draining what the agent already sent) and joins it.
    public func stop() {
        guard let t = thread else { return }
        stopEvent.signal()
        pthread_join(t, nil)
        thread = nil
        parkedConnection = nil
    }

    /// Records the outcome; only the first one counts.
    func finish(_ o: SessionOutcome) {
        let first = state.withLock { s -> Bool in
            if s.outcome != nil { return false }
            s.outcome = o
            return true
        }
        if first { onOutcome(o) }
    }

    func mark(_ update: (inout SessionTimeline) -> Void) {
        state.withLock { update(&$0.timeline) }
    }

    /// A signal handed in through `deliver(signal:)`, if one is waiting.
    func takeInjectedSignal() -> Int32 {
        var signo: Int32 = 0
        return read(injected.read.raw, &signo, 4) == 4 ? signo : 0
    }

    /// Connections the agent may drop and replace before its job starts.
    static let maxReconnects = 8

    /// Whole seconds as an integer, anything else as it is (never a trap).
    public static func formatSeconds(_ s: Double) -> String {
        s.isFinite && s == s.rounded() && abs(s) < 1e15 ? String(Int(s)) : "\(s)"
    }

    /// After the session: hands the host descriptors what output still
    /// waits. Once the command finished (or the machine ended) this waits for
    /// slow readers, though a termination signal ends the wait, and the run
    /// with it; after a timeout or a signal, what the reader has not taken by
    /// now is dropped.
    private func drainOutput() {
        let sinks = [stdoutSink, stderrSink]
        switch outcome {
        case .timedOut?, .interrupted?:
            for sink in sinks { sink.flush() }
            return
        default: break
        }
        while sinks.contains(where: \.hasPending) {
            var fds = sinks.map { pollfd(fd: $0.hasPending ? $0.fd : -1, events: Int16(POLLOUT), revents: 0) }
            fds.append(pollfd(fd: options.signalFD, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: injected.read.raw, events: Int16(POLLIN), revents: 0))
            if retryingEINTR({ poll(&fds, nfds_t(fds.count), -1) }) < 0 { return }
            var signo: Int32 = 0
            if options.signalFD >= 0 && fds[2].revents != 0 { signo = TerminationSignals.take(from: options.signalFD) }
            if fds[3].revents != 0 { signo = takeInjectedSignal() }
            if signo > 0 {
                // The output the user is waiting for is lost: the run ends as a signal's.
                state.withLock { $0.outcome = .interrupted(signal: signo) }
                return
            }
            for (k, sink) in sinks.enumerated() where fds[k].revents != 0 { sink.flush() }
        }
    }
}

/// The agent's end of the vsock, closed when the last reference goes (the
/// session loop's, or a parked session's until `stop`).
final class AgentConnection {
    let fd: OwnedFD
    init(_ fd: consuming OwnedFD) { self.fd = fd }
}

/// Bytes queued for the agent, sent without blocking as the socket takes them.
struct OutgoingQueue {
    private var bytes: [UInt8] = []
    private var sent = 0

    var pending: Int { bytes.count - sent }
    var isEmpty: Bool { sent == bytes.count }

    mutating func append(_ frame: [UInt8]) {
        if isEmpty {
            bytes.removeAll(keepingCapacity: true)
            sent = 0
        }
        bytes += frame
    }

    mutating func removeAll() {
        bytes.removeAll()
        sent = 0
    }

    /// Sends what it can to `fd`. False when the connection broke.
    mutating func send(to fd: Int32) -> Bool {
        while sent < bytes.count {
            let offset = sent
            let n = bytes.withUnsafeBytes { b in
                retryingEINTR { Glibc.send(fd, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            if n > 0 { sent += n; continue }
            return n < 0 && errno == EAGAIN
        }
        return true
    }
}

/// The session thread's state for one session: the agent's connection (and
/// the ones it replaces), what is queued for it, the job's progress and the
/// deadlines. `run` polls until the outcome is known.
struct SessionLoop {
    let session: AgentSession
    /// The agent's connection, once accepted.
    private(set) var connection: AgentConnection?
    private var reader = AgentFrameReader()
    private var outgoing = OutgoingQueue()
    private var stdinOpen: Bool
    /// Streams whose host reader went away, already told to the agent.
    private var closedStreams: [AgentProtocol.OutputStream] = []
    private var jobStarted = false
    private var deadline: UInt64?
    private var graceDeadline: UInt64?
    private var connectDeadline: UInt64?
    private var reconnects = 0
    private var pendingSignal: Int32 = 0
    private var chunk = [UInt8](repeating: 0, count: AgentProtocol.maxChunk)

    init(session: AgentSession) {
        self.session = session
        stdinOpen = session.job.stdinAttached
        connectDeadline = session.options.connectTimeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
    }

    private var options: AgentSession.Options { session.options }
    private var outcome: SessionOutcome? { session.outcome }
    private var outputFull: Bool { session.stdoutSink.isFull || session.stderrSink.isFull }

    /// Where each source sits in one round's poll set.
    private struct PollSet {
        var fds: [pollfd] = []
        var signal: Int?
        var injected = 0
        var connection = 0
        var sinks = 0
        var stdin: Int?

        func fired(_ index: Int?) -> Bool { index.map { fds[$0].revents != 0 } ?? false }
    }

    private func pollSet() -> PollSet {
        var p = PollSet()
        p.fds.append(pollfd(fd: session.stopEvent.fd, events: Int16(POLLIN), revents: 0))
        if options.signalFD >= 0 {
            p.signal = p.fds.count
            p.fds.append(pollfd(fd: options.signalFD, events: Int16(POLLIN), revents: 0))
        }
        p.injected = p.fds.count
        p.fds.append(pollfd(fd: session.injected.read.raw, events: Int16(POLLIN), revents: 0))
        p.connection = p.fds.count
        if let c = connection?.fd.raw {
            // While output waits for a slow reader, the agent waits too
            // (not polled at all: its POLLHUP would wake this loop in vain).
            p.fds.append(pollfd(fd: outputFull ? -1 : c, events: Int16(POLLIN) | (outgoing.isEmpty ? 0 : Int16(POLLOUT)), revents: 0))
        } else {
            p.fds.append(pollfd(fd: options.listener, events: Int16(POLLIN), revents: 0))
        }
        p.sinks = p.fds.count
        for sink in [session.stdoutSink, session.stderrSink] {
            p.fds.append(pollfd(fd: sink.hasPending ? sink.fd : -1, events: Int16(POLLOUT), revents: 0))
        }
        // Read stdin only once the job runs (bytes sent earlier could go
        // down with a connection the agent drops and replaces), and only
        // while the queue to the guest is short: the guest's pace sets ours.
        if stdinOpen && jobStarted && connection != nil && outgoing.pending < AgentProtocol.maxChunk * 4 {
            p.stdin = p.fds.count
            p.fds.append(pollfd(fd: options.stdinFD, events: Int16(POLLIN), revents: 0))
        }
        return p
    }

    /// The poll timeout until the nearest deadline (-1: none); nil when one
    /// has passed, and the session is finished.
    private func timeoutOrFinish() -> Int32? {
        let now = Clock.monotonicNanos()
        if let d = graceDeadline, now >= d { session.finish(.interrupted(signal: pendingSignal)); return nil }
        if let d = deadline, now >= d { session.finish(.timedOut); return nil }
        if let d = connectDeadline, now >= d {
            let seconds = AgentSession.formatSeconds(options.connectTimeoutSeconds ?? 0)
            session.finish(.failed(.agentMissing("the guest agent did not connect within \(seconds) s")))
            return nil
        }
        var wait: Int32 = -1
        for d in [deadline, graceDeadline, connectDeadline].compactMap({ $0 }) {
            let ms = Int32(min((d - now) / 1_000_000 + 1, 60_000))
            wait = wait < 0 ? ms : min(wait, ms)
        }
        return wait
    }

    mutating func run() {
        while outcome == nil {
            var p = pollSet()
            guard let wait = timeoutOrFinish() else { break }
            if retryingEINTR({ poll(&p.fds, nfds_t(p.fds.count), wait) }) < 0 {
                session.finish(.failed(.system(.last("poll"))))
                break
            }
            if p.fds[0].revents != 0 {
                // The machine ended: take what the agent already sent, then stop.
                if connection != nil { _ = receive() }
                session.finish(.abandoned)
                break
            }
            if p.fired(p.signal) { onSignal(TerminationSignals.take(from: options.signalFD)) }
            if p.fired(p.injected) { onSignal(session.takeInjectedSignal()) }
            if outcome != nil { break }
            for (k, (sink, stream)) in [(session.stdoutSink, AgentProtocol.OutputStream.stdout), (session.stderrSink, .stderr)].enumerated()
            where p.fds[p.sinks + k].revents != 0 && !sink.flush() {
                readerGone(stream)
            }
            let ev = p.fds[p.connection].revents
            guard connection != nil else {
                if ev != 0 { accept() }
                continue
            }
            if ev & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !receive() {
                if outcome != nil { break }
                if dropBeforeStart() { continue }
                session.finish(.failed(.agentLost("the guest agent disconnected before the command finished")))
                break
            }
            if ev & Int16(POLLOUT) != 0 && !flush() {
                if dropBeforeStart() { continue }
                session.finish(.failed(.agentLost("the guest agent disconnected before the command finished")))
                break
            }
            if p.fired(p.stdin) {
                readStdin()
                _ = flush()
            }
        }
        if options.park == nil { connection = nil }
    }

    /// Takes the agent's connection and sends it the job (or PARK).
    private mutating func accept() {
        do {
            // A refused peer's socket closes here, before a byte is sent.
            guard let c = try UnixSocket.accept(options.listener) else { return }
            guard options.peers.admits(c.raw) else { return }
            connection = AgentConnection(c)
        } catch {
            session.finish(.failed(.system(error)))
            return
        }
        let t = Clock.monotonicNanos()
        session.mark { $0.agentConnected = t }
        if let warmUp = options.park {
            outgoing.append(AgentProtocol.parkFrame(warmUp: warmUp))
        } else {
            outgoing.append(AgentProtocol.jobFrame(session.job, wallClockNanos: Clock.realtimeNanos()))
        }
        _ = flush()
    }

    /// Reads the connection dry, or until output waits for a slow reader.
    /// Returns false at EOF or on an error.
    private mutating func receive() -> Bool {
        guard let c = connection?.fd.raw else { return false }
        while !outputFull {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { recv(c, b.baseAddress, b.count, 0) } }
            if n > 0 {
                chunk.withUnsafeBytes { reader.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if !dispatch() { return false }
                continue
            }
            if n == 0 { return false }
            return errno == EAGAIN
        }
        return true
    }

    /// Handles decoded messages. Returns false when the session is over.
    private mutating func dispatch() -> Bool {
        while true {
            let message: AgentMessage?
            do {
                message = try reader.next()
            } catch {
                session.finish(.failed(error))
                return false
            }
            guard let m = message else { return true }
            if !handle(m) { return false }
        }
    }

    /// One message from the agent. Returns false when the session is over.
    private mutating func handle(_ m: AgentMessage) -> Bool {
        switch m {
        case let .hello(version, started, connected):
            guard version == AgentProtocol.version else {
                session.finish(.failed(.protocolViolation("agent speaks version \(version), this host \(AgentProtocol.version)")))
                return false
            }
            session.mark { $0.guestAgentStart = started; $0.guestAgentConnected = connected }
            connectDeadline = nil
        case let .stdout(bytes):
            if !bytes.isEmpty { noteOutput(); emit(bytes, to: session.stdoutSink, .stdout) }
        case let .stderr(bytes):
            if !bytes.isEmpty { noteOutput(); emit(bytes, to: session.stderrSink, .stderr) }
        case let .started(_, nanos):
            jobStarted = true
            let now = Clock.monotonicNanos()
            session.mark { $0.jobStarted = now; $0.guestJobStart = nanos }
            if let t = options.timeoutSeconds { deadline = Clock.deadline(afterSeconds: t) }
        case let .exit(status, nanos):
            let now = Clock.monotonicNanos()
            session.mark { $0.jobExited = now; $0.guestJobEnd = nanos }
            session.finish(.finished(status))
            return false
        case let .error(text):
            session.finish(.failed(.agentFailed(text)))
            return false
        case let .parked(nanos):
            guard options.park != nil else { return true }
            session.mark { $0.guestParked = nanos }
            session.finish(.parked)
            return false
        case .ready, .unknown:
            break
        }
        return true
    }

    /// Job output to its host descriptor. When the reader has gone, the
    /// agent is told once, and the job's next write to that stream gets
    /// SIGPIPE, as in a local pipeline.
    private mutating func emit(_ bytes: [UInt8], to sink: OutputSink, _ stream: AgentProtocol.OutputStream) {
        if sink.write(bytes) { return }
        readerGone(stream)
    }

    private mutating func readerGone(_ stream: AgentProtocol.OutputStream) {
        guard !closedStreams.contains(stream) else { return }
        closedStreams.append(stream)
        outgoing.append(AgentProtocol.closeOutputFrame(stream))
        _ = flush()
    }

    /// A connection lost before the job started is one the agent replaces
    /// (PROTOCOL.md: it reconnects until a JOB arrives), as after a
    /// restore, when the vsock transport reset can also take a connection
    /// made just before it: listen again and send the job on the next.
    private mutating func dropBeforeStart() -> Bool {
        guard !jobStarted, outcome == nil, reconnects < AgentSession.maxReconnects, connection != nil else { return false }
        connection = nil
        reconnects += 1
        reader = AgentFrameReader()
        outgoing.removeAll()
        connectDeadline = options.connectTimeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
        return true
    }

    private func noteOutput() {
        let now = Clock.monotonicNanos()
        session.mark { if $0.firstOutput == 0 { $0.firstOutput = now } }
    }

    /// Sends what is queued without blocking. Returns false when the connection broke.
    private mutating func flush() -> Bool {
        guard let c = connection?.fd.raw else { return true }
        return outgoing.send(to: c)
    }

    private mutating func readStdin() {
        let fd = options.stdinFD
        let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(fd, b.baseAddress, b.count) } }
        if n < 0 && errno == EAGAIN { return }
        var f: [UInt8] = []
        // EOF, or an error that ends stdin all the same: an empty STDIN frame.
        AgentProtocol.appendFrame(.stdin, n > 0 ? chunk[0..<n] : [], to: &f)
        if n <= 0 { stdinOpen = false }
        outgoing.append(f)
    }

    private mutating func onSignal(_ signo: Int32) {
        guard signo > 0 else { return }
        // Before the job runs, or at the second signal: stop at once.
        // Otherwise the job gets the signal and a grace period to exit on its own.
        if !jobStarted || graceDeadline != nil {
            session.finish(.interrupted(signal: signo))
            return
        }
        graceDeadline = Clock.deadline(afterSeconds: options.signalGraceSeconds)
        pendingSignal = signo
        var payload: [UInt8] = []
        AgentProtocol.appendLE(UInt32(signo), to: &payload)
        var frame: [UInt8] = []
        AgentProtocol.appendFrame(.signal, payload, to: &frame)
        outgoing.append(frame)
        _ = flush()
    }
}
