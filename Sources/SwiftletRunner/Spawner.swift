import CRunner
import Foundation
import Synchronization

/// Starts VMM processes from one thread that lives as long as the daemon.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits,
/// not the process. A Swift concurrency or Dispatch worker thread can be
/// retired when idle, which would SIGKILL every VMM it started; this
/// thread never is, so a VMM dies only with the daemon (even by SIGKILL).
public final class Spawner: Sendable {
    struct Request {
        var path: String
        var argv: [String]
        var environment: [String]
        var fds: [Int32]
        var done: @Sendable (Result<pid_t, SpawnError>) -> Void
    }

    public struct SpawnError: Error, CustomStringConvertible {
        public var errno: Int32
        public var description: String { "starting the VMM: \(String(cString: strerror(errno)))" }
    }

    private let queue = Mutex<[Request]>([])
    private let wake = DispatchSemaphore(value: 0)
    private let nice: Int32

    /// Every child's nice value is the daemon's plus `nice` (0...39).
    public init(nice: Int = 0) {
        self.nice = Int32(clamping: min(max(nice, 0), 39))
        let thread = Thread { [self] in self.loop() }
        thread.name = "swiftletd-spawner"
        thread.start()
    }

    /// Starts `path` with `argv` in its own process group; `fds[i]` becomes
    /// its descriptor i (-1: /dev/null).
    public func spawn(path: String, argv: [String], environment: [String], fds: [Int32]) async throws(SpawnError) -> pid_t {
        let result: Result<pid_t, SpawnError> = await withCheckedContinuation { continuation in
            queue.withLock { $0.append(Request(path: path, argv: argv, environment: environment, fds: fds, done: { continuation.resume(returning: $0) })) }
            wake.signal()
        }
        return try result.get()
    }

    private func loop() {
        while true {
            wake.wait()
            guard let request = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            request.done(Self.start(request, nice: nice))
        }
    }

    private static func start(_ r: Request, nice: Int32) -> Result<pid_t, SpawnError> {
        var argv = r.argv.map { strdup($0) } + [nil]
        var envp = r.environment.map { strdup($0) } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        let pid = r.fds.withUnsafeBufferPointer { fds in
            swd_spawn(r.path, &argv, &envp, fds.baseAddress, Int32(fds.count), nice)
        }
        return pid > 0 ? .success(pid) : .failure(SpawnError(errno: -pid))
    }
}
