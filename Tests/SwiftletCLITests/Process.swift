import Glibc
import Testing

/// Runs the `swiftlet` binary built beside the test bundle, capturing its
/// stdout and stderr, with stdin from /dev/null.
struct CLIResult {
    var status: Int32
    var stdout: String
    var stderr: String
    /// Exactly what stdout received (filled when asked for binary output).
    var stdoutBytes: [UInt8] = []
    var stderrLines: [Substring] { stderr.split(separator: "\n") }
}

enum CLI {
    /// The `swiftlet` executable next to the test runner (`swift build --build-tests` builds both).
    static var binary: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        var dir = exe
        while let slash = dir.lastIndex(of: "/"), !dir.hasSuffix("/debug") && !dir.hasSuffix("/release") {
            dir = String(dir[..<slash])
            if dir.isEmpty { break }
        }
        return dir + "/swiftlet"
    }

    /// Runs `swiftlet args...`, optionally as another user (`setpriv`).
    static func run(_ args: [String], asUser: String? = nil, timeout: Int = 900, stdin: String = "/dev/null", binaryStdout: Bool = false) throws -> CLIResult {
        let out = try tempFile("out"), err = try tempFile("err")
        defer { unlink(out); unlink(err) }
        var argv = ["timeout", String(timeout)]
        if let u = asUser { argv += ["setpriv", "--reuid=\(u)", "--regid=nogroup", "--clear-groups"] }
        argv += [binary] + (asUser == nil ? jailed(args) : args)
        let pid = try spawn(argv, stdin: stdin, stdout: out, stderr: err)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        var r = CLIResult(status: exitCode(status), stdout: readText(out), stderr: readText(err))
        if binaryStdout { r.stdoutBytes = readBytes(out) }
        return r
    }

    /// A `swiftlet` started in the background (no `timeout` wrapper, so signals reach it directly).
    struct Running {
        let pid: pid_t
        let stdoutPath: String
        let stderrPath: String

        /// Waits for the exit (killing it after `seconds`), collects the output, removes the files.
        func wait(seconds: Int = 900) throws -> CLIResult {
            var status: Int32 = 0
            let deadline = time(nil) + seconds
            while true {
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid { break }
                if r < 0 && errno != EINTR { break }
                if time(nil) > deadline { kill(pid, SIGKILL) }
                usleep(20_000)
            }
            defer { unlink(stdoutPath); unlink(stderrPath) }
            return CLIResult(status: CLI.exitCode(status), stdout: CLI.readText(stdoutPath), stderr: CLI.readText(stderrPath))
        }

        /// Polls stdout until it contains `text`.
        func waitForStdout(_ text: String, seconds: Int) -> Bool {
            let deadline = time(nil) + seconds
            while time(nil) <= deadline {
                if CLI.readText(stdoutPath).contains(text) { return true }
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { return false }
                usleep(50_000)
            }
            return false
        }
    }

    /// With SWIFTLET_TEST_JAIL=1 (`make test` runs RunTests so), every `run`
    /// becomes `run --jail`: a jailed run must pass the same tests. Runs
    /// that expose a vsock path, which the jail does not take, stay as they are.
    static func jailed(_ args: [String]) -> [String] {
        guard getenv("SWIFTLET_TEST_JAIL").map({ String(cString: $0) == "1" }) == true,
              args.first == "run", !args.contains("--vsock-uds"), !args.contains("--jail") else { return args }
        return ["run", "--jail"] + args.dropFirst()
    }

    /// `environment` (`KEY=VALUE`) is added through env(1), which execs swiftlet in the same process.
    static func start(_ args: [String], environment: [String] = []) throws -> Running {
        let out = try tempFile("out"), err = try tempFile("err")
        let argv = (environment.isEmpty ? [] : ["env"] + environment) + [binary] + jailed(args)
        return Running(pid: try spawn(argv, stdout: out, stderr: err), stdoutPath: out, stderrPath: err)
    }

    static func exitCode(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func spawn(_ argv: [String], stdin: String = "/dev/null", stdout: String, stderr: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { throw SpawnError(errno: rc) }
        return pid
    }

    struct SpawnError: Error { let errno: Int32 }

    static func tempFile(_ tag: String) throws -> String {
        var template = Array("/tmp/swiftlet-test-\(tag)-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw SpawnError(errno: errno) }
        close(fd)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func tempDirectory(_ tag: String) throws -> String {
        var template = Array("/tmp/swiftlet-test-\(tag)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw SpawnError(errno: errno) }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func readText(_ path: String) -> String {
        String(decoding: readBytes(path), as: UTF8.self)
    }

    static func readBytes(_ path: String) -> [UInt8] {
        guard let f = fopen(path, "r") else { return [] }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return bytes
    }

    static func writeFile(_ bytes: [UInt8]) throws -> String {
        let path = try tempFile("img")
        let f = fopen(path, "w")
        _ = fwrite(bytes, 1, bytes.count, f)
        fclose(f)
        return path
    }
}

/// Where `make` puts the default guest images.
enum Images {
    static var cache: String {
        if let d = getenv("SWIFTLET_CACHE") { return String(cString: d) }
        if let x = getenv("XDG_CACHE_HOME") { return String(cString: x) + "/swiftlet" }
        return String(cString: getenv("HOME") ?? strdup("/root")) + "/.cache/swiftlet"
    }
    static var bzImage: String { cache + "/default/bzImage" }
    static var vmlinux: String { cache + "/default/vmlinux" }
    static var initramfs: String { cache + "/default/initramfs.cpio" }
    static var rootfs: String { cache + "/default/rootfs.ext4" }
    static var present: Bool { access(bzImage, R_OK) == 0 && access(initramfs, R_OK) == 0 && access(vmlinux, R_OK) == 0 }
}
