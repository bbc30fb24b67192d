import CSwiftlet
import Glibc
import SwiftletSys

/// A program of the host (e2fsprogs' mkfs.ext4 and debugfs) run to its end,
/// with stdin and stdout on /dev/null and its stderr collected.
enum HostTool {
    /// The program's path: the sbin directories first, which a non-root
    /// user's PATH often lacks, then PATH.
    static func find(_ name: String) throws(ImageError) -> String {
        var dirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        if let path = getenv("PATH") { dirs += String(cString: path).split(separator: ":").map(String.init) }
        for dir in dirs where access(dir + "/" + name, X_OK) == 0 { return dir + "/" + name }
        throw .tool(name, reason: "not found (install e2fsprogs)")
    }

    /// Runs `argv` (argv[0] a path) and returns its stderr; a non-zero exit
    /// is an error carrying stderr's last line.
    static func run(_ argv: [String], environment extra: [String] = []) throws(ImageError) -> String {
        let name = String(argv[0].split(separator: "/").last ?? "")
        var fds: [Int32] = [-1, -1]
        guard swl_pipe2(&fds, O_CLOEXEC) == 0 else { throw .system(.last("pipe2")) }
        let readEnd = OwnedFD(taking: fds[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var inherited: [String] = []
        var e = environ
        while let entry = e.pointee {
            inherited.append(String(cString: entry))
            e += 1
        }
        var cEnv = (inherited + extra).map { strdup($0) } + [nil]
        defer { for p in cEnv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cArgs, &cEnv)
        close(fds[1]) // the child's copy is the only writer now: EOF when it exits
        guard rc == 0 else { throw .tool(name, reason: String(cString: strerror(rc))) }
        return try collect(readEnd: readEnd.raw, pid: pid, name: name)
    }

    private static func collect(readEnd: Int32, pid: pid_t, name: String) throws(ImageError) -> String {
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(readEnd, b.baseAddress, b.count) } }
            guard n > 0 else { break }
            // Bounded: only the end matters for the error line.
            output += chunk[0..<n]
            if output.count > 1 << 20 { output.removeFirst(output.count - (1 << 19)) }
        }
        var status: Int32 = 0
        _ = retryingEINTR { waitpid(pid, &status, 0) }
        let text = String(decoding: output, as: UTF8.self)
        guard status == 0 else {
            let last = text.split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
            throw .tool(name, reason: last)
        }
        return text
    }
}
