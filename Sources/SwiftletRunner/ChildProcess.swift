import CRunner
import Foundation
import SwiftletSys

/// A short-lived `swiftlet` child the runner waits for (`snapshot create`,
/// `image prepare`): started by a `Spawner` (so it dies with the daemon),
/// its stdout and stderr collected, and waited for on a thread of its own,
/// so neither the caller's actor nor the concurrency pool blocks on it.
struct ChildProcess {
    struct Result: Sendable {
        /// The wait status.
        var status: Int32
        var stdout: [UInt8]
        /// Its last 64 KiB.
        var stderr: [UInt8]

        var succeeded: Bool { status == 0 }
        /// Its last stderr line without the `swiftlet: error: ` prefix, or
        /// the status when there is none: the one line a failure reports.
        var errorLine: String {
            let lines = String(decoding: stderr, as: UTF8.self).split(separator: "\n")
            let line = lines.last(where: { $0.hasPrefix(Self.errorPrefix) }) ?? lines.last
            guard let line else {
                return status & 0x7f != 0 ? "killed by signal \(status & 0x7f)" : "exited with status \((status >> 8) & 0xff)"
            }
            return line.hasPrefix(Self.errorPrefix) ? String(line.dropFirst(Self.errorPrefix.count)) : String(line)
        }
        static let errorPrefix = "swiftlet: error: "
    }

    /// Runs `path` with `argv` (stdin /dev/null) to its end. Throws only
    /// when it could not be started; `captureStdout` false sends stdout to /dev/null.
    static func run(path: String, argv: [String], spawner: Spawner, captureStdout: Bool = true,
                    stdoutLimit: Int = 1 << 20) async throws(RunnerError) -> Result {
        // Our ends are taken from the pipes once the child has its copies;
        // the rest close when this returns or throws.
        func pipe() throws(RunnerError) -> SwiftletSys.Pipe {
            do { return try SwiftletSys.Pipe() } catch { throw .internalFailure("\(error)") }
        }
        let errPipe = try pipe()
        var outPipe: SwiftletSys.Pipe?
        var childStdout: Int32 = -1
        if captureStdout {
            let p = try pipe()
            childStdout = p.write.raw
            outPipe = consume p
        }
        let pid: pid_t
        do {
            pid = try await spawner.spawn(path: path, argv: argv, environment: VMProcess.childEnvironment(),
                                          fds: [-1, childStdout, errPipe.write.raw])
        } catch {
            throw .internalFailure("starting \(argv.prefix(3).joined(separator: " ")): \(String(cString: strerror(error.errno)))")
        }
        var ourStdout: Int32 = -1
        if let p = consume outPipe { ourStdout = p.keepingRead().release() }
        let outFD = ourStdout
        let errFD = errPipe.keepingRead().release()
        return await withCheckedContinuation { (c: CheckedContinuation<Result, Never>) in
            let thread = Thread {
                let (out, err) = collect(stdout: outFD, stderr: errFD, stdoutLimit: stdoutLimit)
                if outFD >= 0 { close(outFD) }
                close(errFD)
                var status: Int32 = 0
                _ = retryingEINTR { waitpid(pid, &status, 0) }
                c.resume(returning: Result(status: status, stdout: out, stderr: err))
            }
            thread.name = "swiftletd-child-\(pid)"
            thread.start()
        }
    }

    /// Reads both pipes to their ends (poll: neither fills while the
    /// other is read).
    private static func collect(stdout: Int32, stderr: Int32, stdoutLimit: Int) -> ([UInt8], [UInt8]) {
        var out: [UInt8] = [], err: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var open = [stdout, stderr].filter { $0 >= 0 }
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if retryingEINTR({ poll(&fds, nfds_t(fds.count), -1) }) < 0 { break }
            for p in fds where p.revents != 0 {
                let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(p.fd, b.baseAddress, b.count) } }
                if n <= 0 {
                    open.removeAll { $0 == p.fd }
                    continue
                }
                if p.fd == stdout {
                    if out.count < stdoutLimit { out += chunk[0..<min(n, stdoutLimit - out.count)] }
                } else {
                    err += chunk[0..<n]
                    if err.count > 65536 { err.removeFirst(err.count - 65536) }
                }
            }
        }
        return (out, err)
    }

    /// Runs blocking work (hashing a large image) on a thread of its own,
    /// not on the actor that awaits it nor on the concurrency pool.
    static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws(RunnerError) -> T) async throws(RunnerError) -> T {
        let result: Swift.Result<T, RunnerError> = await withCheckedContinuation { c in
            Thread.detachNewThread {
                do throws(RunnerError) { c.resume(returning: .success(try work())) } catch { c.resume(returning: .failure(error)) }
            }
        }
        return try result.get()
    }
}
