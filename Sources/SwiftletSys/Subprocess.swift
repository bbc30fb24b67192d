import CSwiftlet
import Glibc

/// A program run to its end: stdin and stdout on /dev/null, stderr
/// collected (its last 512 KiB at most: callers want its last line).
/// `swiftlet run` creating its cached snapshot and the image conversion's
/// mkfs.ext4 and debugfs run this way.
public enum Subprocess {
    public struct Result: Sendable {
        /// The wait status (0: exited 0).
        public var status: Int32
        public var stderr: String
        /// Stderr's last line, else "exit status N".
        public var lastLine: String {
            stderr.split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
        }
    }

    /// Spawns `path` with `argv` and this process's environment, `extra`
    /// (`KEY=VALUE`) replacing what it names, and waits for it. Only a
    /// failure to start it throws.
    public static func run(path: String, argv: [String], environment extra: [String] = []) throws(SystemError) -> Result {
        var fds: [Int32] = [-1, -1]
        guard swl_pipe2(&fds, O_CLOEXEC) == 0 else { throw .last("pipe2") }
        let readEnd = OwnedFD(taking: fds[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        func key(_ entry: String) -> Substring { entry.prefix { $0 != "=" } }
        let replaced = Set(extra.map(key))
        var inherited: [String] = []
        var e = environ
        while let entry = e.pointee {
            let text = String(cString: entry)
            if !replaced.contains(key(text)) { inherited.append(text) }
            e += 1
        }
        var cEnv = (inherited + extra).map { strdup($0) } + [nil]
        defer { for p in cEnv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, &cArgs, &cEnv)
        close(fds[1]) // the child's copy is the only writer now: EOF when it exits
        guard rc == 0 else { throw SystemError("posix_spawn(\(path))", errno: rc) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(readEnd.raw, b.baseAddress, b.count) } }
            guard n > 0 else { break }
            output += chunk[0..<n]
            if output.count > 1 << 20 { output.removeFirst(output.count - (1 << 19)) }
        }
        var status: Int32 = 0
        _ = retryingEINTR { waitpid(pid, &status, 0) }
        return Result(status: status, stderr: String(decoding: output, as: UTF8.self))
    }
}
