import CRunner
import Foundation
import Synchronization
import SwiftletSys

/// How the runner starts a VMM: `swiftlet run --snapshot DIR` with the
/// function's handler (and `--image` for an image reference), strict seccomp, jailed when asked, its timings on
/// descriptor 3 (stderr stays the function's log) and, for a warm VM, held
/// after the restore until a byte arrives on descriptor 4.
public struct VMLaunch: Sendable {
    public var swiftlet: String
    public var snapshotDirectory: String
    public var spec: FunctionSpec
    public var jail: Bool
    public var warm: Bool

    public init(swiftlet: String, snapshotDirectory: String, spec: FunctionSpec, jail: Bool, warm: Bool) {
        (self.swiftlet, self.snapshotDirectory, self.spec, self.jail, self.warm) = (swiftlet, snapshotDirectory, spec, jail, warm)
    }

    var arguments: [String] {
        var a = ["swiftlet", "run", "--snapshot", snapshotDirectory, "--seccomp", "strict",
                 "--timeout", String(spec.timeoutSeconds), "--report-fd", "3"]
        if warm { a += ["--start-fd", "4"] }
        if jail { a += ["--jail"] }
        for (k, v) in spec.env.sorted(by: { $0.key < $1.key }) { a += ["--env", "\(k)=\(v)"] }
        if let w = spec.workdir { a += ["--workdir", w] }
        // An image reference: the run restores its snapshot and takes the
        // image's configuration (Env, WorkingDir, User) and its users from it.
        if let reference = spec.imageReference {
            a += ["--image", reference]
            if let u = spec.user { a += ["--user", u] }
        }
        return a + ["--"] + spec.command
    }
}

/// What a VMM's run came to.
public struct VMResult: Sendable {
    public var outcome: AttemptOutcome
    /// The `--report-fd` line's fields (boot-ms, job-host-ms, outcome, ...).
    public var report: [String: String]
    public var outputBytes: Int
    /// Stdout as well as in its file, when it was at most `VMOutput.keptInMemory`
    /// (a synchronous invoke's response then needs no read back).
    public var output: [UInt8]?
    public var logBytes: Int
    /// The last 4 KiB of stderr (Lambda's `LogType: Tail`).
    public var logTail: [UInt8]
    /// CLOCK_MONOTONIC ns when the VMM was given the job: exec'd (cold) or
    /// sent its start byte (warm); and when it had exited and was reaped.
    public var handedOverAt: UInt64
    public var exitedAt: UInt64

    func milliseconds(_ key: String) -> Double? { report[key].flatMap(Double.init) }
}

/// Where a run's streams go and how much of them may.
public struct VMOutput: Sendable {
    public var outputPath: String
    public var logPath: String
    /// Stdout over this ends the run as `outputTooLarge`.
    public var outputLimit: Int
    /// Stderr past this is dropped (the tail is still kept).
    public var logLimit: Int
    static let keptInMemory = 256 * 1024
    public init(outputPath: String, logPath: String, outputLimit: Int, logLimit: Int) {
        (self.outputPath, self.logPath, self.outputLimit, self.logLimit) = (outputPath, logPath, outputLimit, logLimit)
    }
}

/// One VMM process and the pipes to it. Made by `start` (cold) or kept
/// ready in a warm pool; `run` hands it one payload and collects the
/// result on its own thread; `stop` ends it early.
public final class VMProcess: Sendable {
    public let pid: pid_t
    public let launch: VMLaunch
    /// CLOCK_MONOTONIC ns when the process was started, and when fork and
    /// exec had returned.
    public let startedAt: UInt64
    public let spawnedAt: UInt64
    /// The pipe ends' numbers, for poll and I/O while `ends` still holds them.
    private let stdinFD: Int32, stdoutFD: Int32, stderrFD: Int32, reportFD: Int32
    private let startFD: Int32
    private let ends: Mutex<Ends>
    private let state = Mutex<State>(State())

    private struct State {
        var stopping: AttemptOutcome?
        var exited = false
    }

    /// Our ends of the VMM's pipes. Each is closed by dropping it, so
    /// exactly once (a second close could hit a descriptor number NIO has
    /// reused for a socket); what is left closes with the process object.
    private struct Ends: ~Copyable {
        enum Name { case stdin, stdout, stderr, report, start }
        var stdin: OwnedFD?, stdout: OwnedFD?, stderr: OwnedFD?, report: OwnedFD?, start: OwnedFD?

        mutating func close(_ name: Name) {
            switch name {
            case .stdin: stdin = nil
            case .stdout: stdout = nil
            case .stderr: stderr = nil
            case .report: report = nil
            case .start: start = nil
            }
        }
    }

    public enum VMError: Error, CustomStringConvertible {
        case spawn(Spawner.SpawnError)
        case system(String, Int32)
        public var description: String {
            switch self {
            case let .spawn(e): return e.description
            case let .system(call, e): return "\(call): \(String(cString: strerror(e)))"
            }
        }
    }

    private init(pid: pid_t, launch: VMLaunch, ends: consuming Ends, startedAt: UInt64) {
        (self.pid, self.launch, self.startedAt) = (pid, launch, startedAt)
        spawnedAt = Clock.monotonicNanos()
        (stdinFD, stdoutFD, stderrFD, reportFD) = (ends.stdin.rawOrNone, ends.stdout.rawOrNone, ends.stderr.rawOrNone, ends.report.rawOrNone)
        startFD = ends.start.rawOrNone
        self.ends = Mutex(ends)
    }

    private func closeEnd(_ end: Ends.Name) { ends.withLock { $0.close(end) } }

    /// Starts the VMM. A warm launch holds after the restore until `run`.
    public static func start(_ launch: VMLaunch, spawner: Spawner) async throws(VMError) -> VMProcess {
        // The child's ends close when this returns (or throws), ours on a throw.
        func pipe() throws(VMError) -> SwiftletSys.Pipe {
            do { return try SwiftletSys.Pipe() } catch { throw .system(error.call, error.errno) }
        }
        let stdin = try pipe(), stdout = try pipe(), stderr = try pipe(), report = try pipe()
        var childFDs = [stdin.read.raw, stdout.write.raw, stderr.write.raw, report.write.raw]
        var start: SwiftletSys.Pipe?
        if launch.warm {
            let p = try pipe()
            childFDs.append(p.read.raw)
            start = consume p
        }
        let t0 = Clock.monotonicNanos()
        let pid: pid_t
        do { pid = try await spawner.spawn(path: launch.swiftlet, argv: launch.arguments, environment: childEnvironment(), fds: childFDs) } catch {
            throw .spawn(error)
        }
        for fd in [stdin.write.raw, stdout.read.raw, stderr.read.raw, report.read.raw] { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
        var startEnd: OwnedFD?
        if let p = consume start { startEnd = p.keepingWrite() }
        let ends = Ends(stdin: stdin.keepingWrite(), stdout: stdout.keepingRead(), stderr: stderr.keepingRead(),
                        report: report.keepingRead(), start: startEnd)
        return VMProcess(pid: pid, launch: launch, ends: ends, startedAt: t0)
    }

    /// The VMM's environment: the daemon's, so `SWIFTLET_CACHE` and the
    /// like reach it (read once).
    static func childEnvironment() -> [String] { inheritedEnvironment }
    private static let inheritedEnvironment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }

    /// Still running (a warm VM that died is not handed out).
    public var isAlive: Bool {
        state.withLock { s in
            if s.exited { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { s.exited = true }
            return !s.exited
        }
    }

    /// Hands the payload over and collects the run: stdout to a file up to
    /// the limit, stderr to a file and a 4 KiB tail, the report line; then
    /// reaps the process. Returns when it has exited.
    public func run(payload: [UInt8], output: VMOutput) async -> VMResult {
        // A warm VM gets its start byte first: making the collecting thread
        // then overlaps the guest's resume instead of preceding it.
        let handedOverAt: UInt64
        if startFD >= 0 {
            handedOverAt = Clock.monotonicNanos()
            var go: UInt8 = 1
            _ = write(startFD, &go, 1)
            closeEnd(.start)
        } else {
            handedOverAt = spawnedAt
        }
        return await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: self.collect(payload: payload, output: output, handedOverAt: handedOverAt)) }
            thread.name = "swiftletd-vm-\(pid)"
            thread.start()
        }
    }

    /// Ends the run now: the result's outcome becomes `reason`. An unjailed
    /// VMM's group is SIGKILLed; a jailed one's supervisor gets SIGTERM
    /// twice (the second stops `run` at once) so that it removes its
    /// cgroup and mounts, and SIGKILL after `graceMilliseconds`.
    public func stop(_ reason: AttemptOutcome, graceMilliseconds: Int = 700) {
        let first = state.withLock { s -> Bool in
            guard s.stopping == nil, !s.exited else { return false }
            s.stopping = reason
            return true
        }
        guard first else { return }
        if !launch.jail {
            _ = swd_kill_group(pid, SIGKILL)
            return
        }
        kill(pid, SIGTERM)
        kill(pid, SIGTERM)
        let pid = self.pid
        Thread.detachNewThread { [self] in
            usleep(useconds_t(graceMilliseconds) * 1000)
            if !state.withLock({ $0.exited }) { _ = swd_kill_group(pid, SIGKILL) }
        }
    }

    /// A warm VM given up unused: stopped, and reaped in the background.
    public func discard() {
        stop(.cancelled)
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            _ = retryingEINTR { waitpid(pid, &status, 0) }
            state.withLock { $0.exited = true }
        }
    }

    private func collect(payload: [UInt8], output: VMOutput, handedOverAt: UInt64) -> VMResult {
        // A file that cannot be made loses what would go there, not the run.
        let outFile = try? OwnedFD(opening: output.outputPath, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        let logFile = try? OwnedFD(opening: output.logPath, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        let (out, log) = (outFile.rawOrNone, logFile.rawOrNone)
        var outputBytes = 0, logBytes = 0
        var kept: [UInt8]? = []
        var tail: [UInt8] = []
        var report: [UInt8] = []
        var written = 0
        var stdinOpen = true
        var open = (stdout: true, stderr: true, report: true)
        var buffer = [UInt8](repeating: 0, count: 65536)
        if payload.isEmpty { closeEnd(.stdin); stdinOpen = false }

        while open.stdout || open.stderr || open.report {
            var fds: [pollfd] = []
            if stdinOpen { fds.append(pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0)) }
            if open.stdout { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
            if open.stderr { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
            if open.report { fds.append(pollfd(fd: reportFD, events: Int16(POLLIN), revents: 0)) }
            if retryingEINTR({ poll(&fds, nfds_t(fds.count), 1000) }) < 0 { break }
            for p in fds where p.revents != 0 {
                if p.fd == stdinFD {
                    let k = payload.withUnsafeBytes { b in retryingEINTR { write(stdinFD, b.baseAddress! + written, b.count - written) } }
                    if k > 0 { written += k }
                    if (k < 0 && errno != EAGAIN) || written == payload.count {
                        closeEnd(.stdin)
                        stdinOpen = false
                    }
                    continue
                }
                let k = buffer.withUnsafeMutableBytes { b in retryingEINTR { read(p.fd, b.baseAddress, b.count) } }
                if k < 0 && errno == EAGAIN { continue }
                if k <= 0 {
                    if p.fd == stdoutFD { open.stdout = false } else if p.fd == stderrFD { open.stderr = false } else { open.report = false }
                    continue
                }
                let chunk = buffer[0..<k]
                if p.fd == stdoutFD {
                    outputBytes += k
                    if outputBytes > output.outputLimit {
                        stop(.outputTooLarge(limit: output.outputLimit))
                        open.stdout = false
                    } else if out >= 0 {
                        Self.append(out, chunk)
                    }
                    if outputBytes <= VMOutput.keptInMemory { kept? += chunk } else { kept = nil }
                } else if p.fd == stderrFD {
                    if logBytes < output.logLimit, log >= 0 { Self.append(log, chunk.prefix(output.logLimit - logBytes)) }
                    logBytes += k
                    tail += chunk
                    if tail.count > 4096 { tail.removeFirst(tail.count - 4096) }
                } else if report.count < 4096 {
                    report += chunk
                }
            }
        }
        ends.withLock { for end in [Ends.Name.stdin, .stdout, .stderr, .report] { $0.close(end) } }
        var status: Int32 = 0
        _ = retryingEINTR { waitpid(pid, &status, 0) }
        let exitedAt = Clock.monotonicNanos()
        let stopping = state.withLock { s -> AttemptOutcome? in
            s.exited = true
            return s.stopping
        }
        let fields = Self.parseReport(report)
        let outcome = stopping ?? Self.outcome(status: status, fields: fields, log: tail)
        return VMResult(outcome: outcome, report: fields, outputBytes: min(outputBytes, output.outputLimit),
                        output: out >= 0 ? kept : nil, logBytes: logBytes, logTail: tail, handedOverAt: handedOverAt, exitedAt: exitedAt)
    }

    /// Appends a chunk to an output file; a failed write (a full disk)
    /// drops the chunk, never the run.
    static func append(_ fd: Int32, _ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { try? writeAll(fd, $0) }
    }

    /// `key=value` words of the report line.
    static func parseReport(_ bytes: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for word in String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = word.firstIndex(of: "=") else { continue }
            fields[String(word[..<eq])] = String(word[word.index(after: eq)...])
        }
        return fields
    }

    /// The attempt's outcome from the report's `outcome=` (unambiguous)
    /// and, without one, the wait status: the VMM itself failed.
    static func outcome(status: Int32, fields: [String: String], log: [UInt8]) -> AttemptOutcome {
        if let o = fields["outcome"] {
            if o == "timeout" { return .timedOut }
            if o.hasPrefix("exit:"), let c = Int32(o.dropFirst(5)) { return .exited(c) }
            if o.hasPrefix("signal:"), let s = Int32(o.dropFirst(7)) { return .signalled(s) }
        }
        let lastLine = String(decoding: log, as: UTF8.self).split(separator: "\n").last(where: { $0.hasPrefix("swiftlet: error: ") })
        let why = lastLine.map { String($0.dropFirst(17)) }
        if status & 0x7f != 0 { return .infrastructure(why ?? "the VMM was killed by signal \(status & 0x7f)") }
        return .infrastructure(why ?? "the VMM exited with status \((status >> 8) & 0xff) without a report")
    }
}
