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
    private let stopEvent: EventFD
    /// Signals handed in by `deliver(signal:)`: a non-blocking pipe, read end first.
    private let injected: (read: Int32, write: Int32)
    private var thread: pthread_t?
    /// The agent's connection when a parked session ended; written by the
    /// session thread before it ends, closed by `stop` after joining it.
    private var parkedConnection: Int32 = -1
    /// The job's stdout and stderr on their way out (the session thread's;
    /// made here, before any filter, as they may reopen the descriptors).
    private let stdoutSink: OutputSink
    private let stderrSink: OutputSink
    private let state = Mutex<(outcome: SessionOutcome?, timeline: SessionTimeline)>((nil, SessionTimeline()))

    public init(job: AgentJob, options: Options, onOutcome: @escaping @Sendable (SessionOutcome) -> Void) throws(SandboxError) {
        try job.validate()
        self.job = job
        self.options = options
        self.onOutcome = onOutcome
        stdoutSink = OutputSink(fd: options.stdoutFD)
        stderrSink = OutputSink(fd: options.stderrFD)
        do { stopEvent = try EventFD() } catch { throw .system(error) }
        var p: [Int32] = [-1, -1]
        guard swl_pipe2(&p, O_NONBLOCK | O_CLOEXEC) == 0 else { throw .system(.last("pipe2")) }
        injected = (p[0], p[1])
    }

    deinit {
        stop()
        close(injected.read)
        close(injected.write)
    }

    /// Handles `signo` as if it had arrived on the signalfd: forwarded to a
    /// running job, or the end of the session before it runs (for callers
    /// that take signals some other way, and tests).
    public func deliver(signal signo: Int32) {
        var v = signo
        _ = write(injected.write, &v, 4)
    }

    /// The outcome, once known.
    public var outcome: SessionOutcome? { state.withLock { $0.outcome } }
    public var timeline: SessionTimeline { state.withLock { $0.timeline } }

    public func start() throws(SandboxError) {
        do {
            thread = try spawnThread(name: "agent") { [self] in
                loop()
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
        if parkedConnection >= 0 {
            close(parkedConnection)
            parkedConnection = -1
        }
    }

    // MARK: The loop (session thread)

    private func finish(_ o: SessionOutcome) {
        let first = state.withLock { s -> Bool in
            if s.outcome != nil { return false }
            s.outcome = o
            return true
        }
        if first { onOutcome(o) }
    }

    private func mark(_ update: (inout SessionTimeline) -> Void) {
        state.withLock { update(&$0.timeline) }
    }

    private func loop() {
        // The agent's connection, once accepted; closed when the loop ends.
        var connection: Int32?
        // Parked, the connection stays open until `stop`, after the machine
        // paused: the guest must not see it close before its snapshot.
        defer { if let c = connection { if options.park != nil { parkedConnection = c } else { close(c) } } }
        var reader = AgentFrameReader()
        var outgoing: [UInt8] = []
        var outgoingSent = 0
        var stdinOpen = job.stdinAttached
        // Streams whose host reader went away, already told to the agent.
        var closedStreams: Set<AgentProtocol.OutputStream> = []
        var jobStarted = false
        var deadline: UInt64?
        var graceDeadline: UInt64?
        var connectDeadline = options.connectTimeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
        var reconnects = 0
        var pendingSignal: Int32 = 0
        var chunk = [UInt8](repeating: 0, count: AgentProtocol.maxChunk)

        /// Reads the connection dry, or until output waits for a slow reader.
        /// Returns false at EOF or on an error.
        func receive() -> Bool {
            guard let c = connection else { return false }
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

        var outputFull: Bool { stdoutSink.isFull || stderrSink.isFull }

        /// Job output to its host descriptor. When the reader has gone, the
        /// agent is told once, and the job's next write to that stream gets
        /// SIGPIPE, as in a local pipeline.
        func emit(_ bytes: [UInt8], to sink: OutputSink, _ stream: AgentProtocol.OutputStream) {
            if sink.write(bytes) { return }
            readerGone(stream)
        }

        func readerGone(_ stream: AgentProtocol.OutputStream) {
            guard closedStreams.insert(stream).inserted else { return }
            queue(AgentProtocol.closeOutputFrame(stream))
            _ = flush()
        }

        /// Handles decoded messages. Returns false when the session is over.
        func dispatch() -> Bool {
            while true {
                let message: AgentMessage?
                do {
                    message = try reader.next()
                } catch {
                    finish(.failed(error))
                    return false
                }
                guard let m = message else { return true }
                switch m {
                case let .hello(version, started, connected):
                    guard version == AgentProtocol.version else {
                        finish(.failed(.protocolViolation("agent speaks version \(version), this host \(AgentProtocol.version)")))
                        return false
                    }
                    mark { $0.guestAgentStart = started; $0.guestAgentConnected = connected }
                    connectDeadline = nil
                case let .stdout(bytes):
                    if !bytes.isEmpty { noteOutput(); emit(bytes, to: stdoutSink, .stdout) }
                case let .stderr(bytes):
                    if !bytes.isEmpty { noteOutput(); emit(bytes, to: stderrSink, .stderr) }
                case let .started(_, nanos):
                    jobStarted = true
                    let now = Clock.monotonicNanos()
                    mark { $0.jobStarted = now; $0.guestJobStart = nanos }
                    if let t = options.timeoutSeconds { deadline = Clock.deadline(afterSeconds: t) }
                case let .exit(status, nanos):
                    let now = Clock.monotonicNanos()
                    mark { $0.jobExited = now; $0.guestJobEnd = nanos }
                    finish(.finished(status))
                    return false
                case let .error(text):
                    finish(.failed(.agentFailed(text)))
                    return false
                case .ready:
                    continue
                case let .parked(nanos):
                    guard options.park != nil else { continue }
                    mark { $0.guestParked = nanos }
                    finish(.parked)
                    return false
                case .unknown:
                    continue
                }
            }
        }

        /// A connection lost before the job started is one the agent replaces
        /// (PROTOCOL.md: it reconnects until a JOB arrives), as after a
        /// restore, when the vsock transport reset can also take a connection
        /// made just before it: listen again and send the job on the next.
        func dropBeforeStart() -> Bool {
            guard !jobStarted, outcome == nil, reconnects < Self.maxReconnects, let c = connection else { return false }
            close(c)
            connection = nil
            reconnects += 1
            reader = AgentFrameReader()
            outgoing.removeAll()
            outgoingSent = 0
            connectDeadline = options.connectTimeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
            return true
        }

        func noteOutput() {
            let now = Clock.monotonicNanos()
            mark { if $0.firstOutput == 0 { $0.firstOutput = now } }
        }

        func queue(_ frame: [UInt8]) {
            if outgoingSent == outgoing.count {
                outgoing.removeAll(keepingCapacity: true)
                outgoingSent = 0
            }
            outgoing += frame
        }

        func signalFrame(_ signo: Int32) -> [UInt8] {
            var p: [UInt8] = []
            AgentProtocol.appendLE(UInt32(signo), to: &p)
            var f: [UInt8] = []
            AgentProtocol.appendFrame(.signal, p, to: &f)
            return f
        }

        /// Sends what is queued without blocking. Returns false when the connection broke.
        func flush() -> Bool {
            guard let c = connection else { return true }
            while outgoingSent < outgoing.count {
                let n = outgoing.withUnsafeBytes { b in
                    retryingEINTR { send(c, b.baseAddress! + outgoingSent, b.count - outgoingSent, Int32(MSG_NOSIGNAL)) }
                }
                if n > 0 { outgoingSent += n; continue }
                return n < 0 && errno == EAGAIN
            }
            return true
        }

        func readStdin() {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(options.stdinFD, b.baseAddress, b.count) } }
            if n < 0 && errno == EAGAIN { return }
            var f: [UInt8] = []
            // EOF, or an error that ends stdin all the same: an empty STDIN frame.
            AgentProtocol.appendFrame(.stdin, n > 0 ? chunk[0..<n] : [], to: &f)
            if n <= 0 { stdinOpen = false }
            queue(f)
        }

        func onSignal(_ signo: Int32) {
            guard signo > 0 else { return }
            // Before the job runs, or at the second signal: stop at once.
            // Otherwise the job gets the signal and a grace period to exit on its own.
            if !jobStarted || graceDeadline != nil {
                finish(.interrupted(signal: signo))
                return
            }
            graceDeadline = Clock.deadline(afterSeconds: options.signalGraceSeconds)
            pendingSignal = signo
            queue(signalFrame(signo))
            _ = flush()
        }

        while outcome == nil {
            var fds = [pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
            let sigIndex = fds.count
            if options.signalFD >= 0 { fds.append(pollfd(fd: options.signalFD, events: Int16(POLLIN), revents: 0)) }
            let injectedIndex = fds.count
            fds.append(pollfd(fd: injected.read, events: Int16(POLLIN), revents: 0))
            let connIndex = fds.count
            if let c = connection {
                let wantOut = outgoingSent < outgoing.count
                // While output waits for a slow reader, the agent waits too
                // (not polled at all: its POLLHUP would wake this loop in vain).
                fds.append(pollfd(fd: outputFull ? -1 : c, events: Int16(POLLIN) | (wantOut ? Int16(POLLOUT) : 0), revents: 0))
            } else {
                fds.append(pollfd(fd: options.listener, events: Int16(POLLIN), revents: 0))
            }
            let sinkIndex = fds.count
            for sink in [stdoutSink, stderrSink] {
                fds.append(pollfd(fd: sink.hasPending ? sink.fd : -1, events: Int16(POLLOUT), revents: 0))
            }
            let stdinIndex = fds.count
            // Read stdin only once the job runs (bytes sent earlier could go
            // down with a connection the agent drops and replaces), and only
            // while the queue to the guest is short: the guest's pace sets ours.
            if stdinOpen && jobStarted && connection != nil && outgoing.count - outgoingSent < AgentProtocol.maxChunk * 4 {
                fds.append(pollfd(fd: options.stdinFD, events: Int16(POLLIN), revents: 0))
            }

            var wait: Int32 = -1
            let now = Clock.monotonicNanos()
            for d in [deadline, graceDeadline, connectDeadline].compactMap({ $0 }) {
                if now >= d { break }
                let ms = Int32(min((d - now) / 1_000_000 + 1, 60_000))
                wait = wait < 0 ? ms : min(wait, ms)
            }
            if let d = graceDeadline, now >= d { finish(.interrupted(signal: pendingSignal)); break }
            if let d = deadline, now >= d { finish(.timedOut); break }
            if let d = connectDeadline, now >= d {
                finish(.failed(.agentMissing("the guest agent did not connect within \(Self.formatSeconds(options.connectTimeoutSeconds ?? 0)) s")))
                break
            }

            let n = retryingEINTR { poll(&fds, nfds_t(fds.count), wait) }
            if n < 0 {
                finish(.failed(.system(.last("poll"))))
                break
            }
            if fds[0].revents != 0 {
                // The machine ended: take what the agent already sent, then stop.
                if connection != nil { _ = receive() }
                finish(.abandoned)
                break
            }
            if options.signalFD >= 0 && fds[sigIndex].revents != 0 { onSignal(swl_signalfd_read(options.signalFD)) }
            if fds[injectedIndex].revents != 0 {
                var signo: Int32 = 0
                if read(injected.read, &signo, 4) == 4 { onSignal(signo) }
            }
            if outcome != nil { break }
            for (k, (sink, stream)) in [(stdoutSink, AgentProtocol.OutputStream.stdout), (stderrSink, .stderr)].enumerated()
            where fds[sinkIndex + k].revents != 0 && !sink.flush() {
                readerGone(stream)
            }

            let ev = fds[connIndex].revents
            if connection == nil {
                if ev != 0 {
                    do {
                        // A refused peer's socket closes here, before a byte is sent.
                        if let c = try UnixSocket.accept(options.listener), options.peers.admits(c.raw) {
                            connection = c.release()
                            let t = Clock.monotonicNanos()
                            mark { $0.agentConnected = t }
                            if let warmUp = options.park {
                                queue(AgentProtocol.parkFrame(warmUp: warmUp))
                            } else {
                                queue(AgentProtocol.jobFrame(job, wallClockNanos: Clock.realtimeNanos()))
                            }
                            _ = flush()
                        }
                    } catch {
                        finish(.failed(.system(error)))
                    }
                }
                continue
            }
            if ev & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                if !receive() {
                    if outcome != nil { break }
                    if dropBeforeStart() { continue }
                    finish(.failed(.agentLost("the guest agent disconnected before the command finished")))
                    break
                }
            }
            if ev & Int16(POLLOUT) != 0 && !flush() {
                if dropBeforeStart() { continue }
                finish(.failed(.agentLost("the guest agent disconnected before the command finished")))
                break
            }
            if fds.count > stdinIndex && fds[stdinIndex].revents != 0 {
                readStdin()
                _ = flush()
            }
        }
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
            fds.append(pollfd(fd: injected.read, events: Int16(POLLIN), revents: 0))
            if retryingEINTR({ poll(&fds, nfds_t(fds.count), -1) }) < 0 { return }
            var signo: Int32 = 0
            if options.signalFD >= 0 && fds[2].revents != 0 { signo = swl_signalfd_read(options.signalFD) }
            if fds[3].revents != 0 { _ = read(injected.read, &signo, 4) }
            if signo > 0 {
                // The output the user is waiting for is lost: the run ends as a signal's.
                state.withLock { $0.outcome = .interrupted(signal: signo) }
                return
            }
            for (k, sink) in sinks.enumerated() where fds[k].revents != 0 { sink.flush() }
        }
    }
}
