import Glibc
import Synchronization
import Testing
import SwiftletSys
@testable import SwiftletSandbox

/// The host session against the real agent, built natively and connected
/// over a Unix socket (`swiftlet-agent --unix`): the whole protocol path of
/// `swiftlet run` in milliseconds, without a VM.
@Suite("Agent session against the native agent", .enabled(if: NativeAgent.present, "run `make rootfs` first (it builds the native agent)"))
struct AgentSessionTests {
    struct Finished {
        var outcome: SessionOutcome?
        var stdout: [UInt8]
        var stderr: [UInt8]
        var timeline: SessionTimeline
    }

    /// Runs `job` through a session and a native agent; `stdin` is fed from a file when given.
    func run(_ job: AgentJob, stdin: [UInt8]? = nil, timeout: Double? = nil, signalAfter: (Double, Int32)? = nil,
             droppedConnections: Int = 0) throws -> Finished {
        let dir = try TempDir()
        let path = dir.path + "/agent.sock"
        let listener = try UnixSocket.listen(at: path)
        let out = try dir.file("out"), err = try dir.file("err")
        var inFD: Int32 = -1
        if let stdin {
            let p = dir.path + "/in"
            let f = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            _ = stdin.withUnsafeBytes { write(f, $0.baseAddress, $0.count) }
            close(f)
            inFD = open(p, O_RDONLY)
        }
        defer { if inFD >= 0 { close(inFD) } }

        var options = AgentSession.Options(listener: listener.raw)
        options.peers = .anyone // the native agent is a child process
        options.stdinFD = inFD
        options.stdoutFD = out
        options.stderrFD = err
        options.timeoutSeconds = timeout
        options.connectTimeoutSeconds = 30
        let done = Atomic<Bool>(false)
        let session = try AgentSession(job: job, options: options) { _ in done.store(true, ordering: .releasing) }
        try session.start()
        // Connections that drop before the job starts, as a vsock transport
        // reset after a restore can make them: the session must listen again.
        for _ in 0..<droppedConnections {
            let c = try UnixSocket.connect(to: path)
            usleep(50_000) // the session accepts it and sends the JOB into it
            _ = c
        }
        let agent = try NativeAgent.spawn(socket: path)
        if let (delay, signo) = signalAfter {
            usleep(UInt32(delay * 1e6))
            session.deliver(signal: signo)
        }
        var waited = 0
        while !done.load(ordering: .acquiring) && waited < 30_000 {
            usleep(10_000)
            waited += 10
        }
        session.stop()
        kill(agent, SIGKILL)
        var st: Int32 = 0
        waitpid(agent, &st, 0)
        close(out)
        close(err)
        return Finished(outcome: session.outcome, stdout: dir.read("out"), stderr: dir.read("err"), timeline: session.timeline)
    }

    @Test("exit status, stdout and stderr kept apart, env and workdir")
    func basics() throws {
        let r = try run(AgentJob(argv: ["sh", "-c", "echo \"$A\"; pwd; echo err >&2; exit 7"], environment: ["A=b c"], workingDirectory: "/tmp"))
        guard case .finished(.exited(7))? = r.outcome else { Issue.record("outcome \(String(describing: r.outcome))"); return }
        #expect(String(decoding: r.stdout, as: UTF8.self) == "b c\n/tmp\n")
        #expect(String(decoding: r.stderr, as: UTF8.self) == "err\n")
        #expect(r.timeline.agentConnected > 0 && r.timeline.jobStarted >= r.timeline.agentConnected)
        #expect(r.timeline.jobExited >= r.timeline.jobStarted)
        #expect(r.timeline.guestAgentStart > 0 && r.timeline.guestAgentConnected >= r.timeline.guestAgentStart)
    }

    @Test("connections dropped before the job starts are replaced: the job runs once on the agent's next connection, stdin intact")
    func reconnectBeforeStart() throws {
        let r = try run(AgentJob(argv: ["sh", "-c", "cat; exit 5"], stdinAttached: true), stdin: Array("kept\n".utf8), droppedConnections: 3)
        #expect(r.outcome.map { "\($0)" } == "\(SessionOutcome.finished(.exited(5)))")
        #expect(r.stdout == Array("kept\n".utf8))
    }

    @Test("a signal and a missing command")
    func signalAndNotFound() throws {
        let killed = try run(AgentJob(argv: ["sh", "-c", "kill -9 $$"]))
        guard case .finished(.signaled(9))? = killed.outcome else { Issue.record("outcome \(String(describing: killed.outcome))"); return }
        let missing = try run(AgentJob(argv: ["no-such-command-here"]))
        guard case .finished(.exited(127))? = missing.outcome else { Issue.record("outcome \(String(describing: missing.outcome))"); return }
        #expect(String(decoding: missing.stderr, as: UTF8.self).contains("no-such-command-here: command not found"))
    }

    @Test("4 MiB of binary stdin comes back byte-exact through cat")
    func stdinRoundTrip() throws {
        var bytes = [UInt8](repeating: 0, count: 4 << 20)
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in bytes.indices {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            bytes[i] = UInt8(truncatingIfNeeded: x)
        }
        let r = try run(AgentJob(argv: ["cat"], stdinAttached: true), stdin: bytes)
        guard case .finished(.exited(0))? = r.outcome else { Issue.record("outcome \(String(describing: r.outcome))"); return }
        #expect(r.stdout.count == bytes.count)
        #expect(r.stdout == bytes)
    }

    @Test("the time limit counts from the job's start and ends the session")
    func timeout() throws {
        let start = Clock.monotonicNanos()
        let r = try run(AgentJob(argv: ["sleep", "30"]), timeout: 0.5)
        guard case .timedOut? = r.outcome else { Issue.record("outcome \(String(describing: r.outcome))"); return }
        #expect(Clock.monotonicNanos() - start < 5_000_000_000)
    }

    @Test("a termination signal goes to the job, which reports its own death")
    func forwardedSignal() throws {
        let r = try run(AgentJob(argv: ["sleep", "30"]), signalAfter: (0.5, SIGTERM))
        guard case .finished(.signaled(SIGTERM))? = r.outcome else { Issue.record("outcome \(String(describing: r.outcome))"); return }
    }
}

enum NativeAgent {
    static var path: String {
        let cache: String
        if let d = getenv("SWIFTLET_CACHE") { cache = String(cString: d) }
        else if let x = getenv("XDG_CACHE_HOME") { cache = String(cString: x) + "/swiftlet" }
        else { cache = String(cString: getenv("HOME") ?? strdup("/root")) + "/.cache/swiftlet" }
        return cache + "/default/swiftlet-agent"
    }
    static var present: Bool { access(path, X_OK) == 0 }

    static func spawn(socket: String) throws -> pid_t {
        var pid: pid_t = 0
        var args = [strdup(path), strdup("--unix"), strdup(socket), nil]
        defer { for a in args { free(a) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let rc = posix_spawn(&pid, path, &actions, nil, &args, environ)
        guard rc == 0 else { throw SystemError("posix_spawn(\(path))", errno: rc) }
        return pid
    }
}

/// A private temporary directory, removed with its contents.
final class TempDir {
    let path: String
    init() throws {
        var template = Array("/tmp/swiftlet-test-session-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SystemError.last("mkdtemp") }
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    deinit { _ = system("rm -rf '\(path)'") }

    func file(_ name: String) throws -> Int32 {
        let fd = open(path + "/" + name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError.last("open") }
        return fd
    }

    func read(_ name: String) -> [UInt8] { (try? readFile(path + "/" + name)) ?? [] }
}
