import Glibc
import SwiftletJail
import Testing

/// Whether the root-needing jail tests run. As root they run. Not as root
/// they skip with a reason, except under CI (the `CI` environment variable
/// set), where they run and fail with a clear message instead: a CI run
/// must never pass by skipping the jail.
enum RootGate {
    static var isRoot: Bool { geteuid() == 0 }
    static var required: Bool { getenv("CI") != nil }
    static var enabled: Bool { isRoot || required }
    static let skipMessage: Comment = "the jail tests need root; run them as root, or set CI to make this a failure"

    /// Fails the test unless root (reached only when `required`).
    static func requireRoot() throws {
        try #require(isRoot, "the jail tests need root, and CI is set: run them as root (effective uid is \(geteuid()))")
    }
}

/// Runs `swiftlet-jail-probe` (built beside the tests) and parses its
/// key=value lines.
struct ProbeRun: CustomStringConvertible {
    var status: Int32
    var signal: Int32
    var stdout: String
    var stderr: String

    var exitCode: Int32 { signal != 0 ? 128 + signal : status }
    var description: String { "status=\(status) signal=\(signal)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }

    /// The value of the first `key=` line.
    subscript(key: String) -> String? { values(key).first }

    /// The values of every `key=` line.
    func values(_ key: String) -> [String] {
        stdout.split(separator: "\n").compactMap { line in
            line.hasPrefix(key + "=") ? String(line.dropFirst(key.count + 1)) : nil
        }
    }

    /// The cgroup leaf directories the probe printed.
    var leaves: [String] { values("cgroup.leaf").map { String($0.split(separator: " ")[0]) } }
}

/// A running probe (for the tests that signal it).
struct RunningProbe {
    var pid: pid_t
    var out: String
    var err: String

    /// Waits until a stdout line starts with `prefix` (or the timeout).
    func waitForLine(_ prefix: String, timeoutMs: Int = 20_000) -> Bool {
        var waited = 0
        while waited < timeoutMs {
            if Probe.readText(out).split(separator: "\n").contains(where: { $0.hasPrefix(prefix) }) { return true }
            usleep(20_000)
            waited += 20
        }
        return false
    }

    func output() -> ProbeRun { ProbeRun(status: 0, signal: 0, stdout: Probe.readText(out), stderr: Probe.readText(err)) }

    /// Waits for the probe to end; removes its output files.
    func wait() -> ProbeRun {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        var r = output()
        r.status = (status >> 8) & 0xff
        r.signal = signaled ? status & 0x7f : 0
        unlink(out)
        unlink(err)
        return r
    }
}

enum Probe {
    /// The directory of the test runner's build products (`.../debug`).
    static var productsDir: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        var dir = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        while let slash = dir.lastIndex(of: "/"), !dir.hasSuffix("/debug") && !dir.hasSuffix("/release") {
            dir = String(dir[..<slash])
        }
        return dir
    }

    static var path: String { productsDir + "/swiftlet-jail-probe" }

    static func run(_ args: [String], prefix: [String] = []) throws -> ProbeRun {
        try start(args, prefix: prefix).wait()
    }

    static func start(_ args: [String], prefix: [String] = []) throws -> RunningProbe {
        try #require(access(path, X_OK) == 0, "\(path) is missing: swift build --product swiftlet-jail-probe")
        let out = try tempFile("out"), err = try tempFile("err")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_TRUNC, 0)
        posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_TRUNC, 0)
        let argv = prefix + [path] + args
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        try #require(rc == 0, "spawn \(argv[0]): \(rc)")
        return RunningProbe(pid: pid, out: out, err: err)
    }

    static func tempFile(_ tag: String) throws -> String {
        var template = Array("/tmp/swiftlet-jail-\(tag)-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        close(fd)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A fresh directory the jail's unprivileged uid can write (mode 0777).
    static func tempDirectory() throws -> String {
        var template = Array("/tmp/swiftlet-jail-bind-XXXXXX".utf8CString)
        try #require(mkdtemp(&template) != nil)
        let dir = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        chmod(dir, 0o777)
        return dir
    }

    static func readText(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// The host's mount table lines that mention `text`.
    static func mounts(mentioning text: String) -> [Substring] {
        readText("/proc/self/mountinfo").split(separator: "\n").filter { $0.contains(text) }
    }

    /// Whether process `pid` is gone or a zombie (dead, not yet reaped by
    /// whoever inherited it), waiting up to `timeoutMs`.
    static func dead(_ pid: String, timeoutMs: Int = 5000) -> Bool {
        var waited = 0
        while waited < timeoutMs {
            let status = readText("/proc/\(pid)/status")
            if status.isEmpty || status.contains("State:\tZ") || status.contains("State:\tX") { return true }
            usleep(20_000)
            waited += 20
        }
        return false
    }

    /// Checks that nothing of a finished probe run is left on the host: its
    /// cgroup leaves, its root directory, any mount of it.
    static func expectNothingLeft(_ r: ProbeRun, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!r.leaves.isEmpty, "the probe printed no cgroup leaf\n\(r)", sourceLocation: sourceLocation)
        if let cleanup = r["outcome.cleanup"] {
            #expect(cleanup == "ok", "the supervisor's clean-up failed\n\(r)", sourceLocation: sourceLocation)
        }
        for leaf in r.leaves {
            #expect(!exists(leaf), "cgroup leaf \(leaf) is left", sourceLocation: sourceLocation)
        }
        if let root = r["jail.root"] {
            #expect(!exists(root), "jail root \(root) is left", sourceLocation: sourceLocation)
            #expect(mounts(mentioning: root).isEmpty, "mounts left: \(mounts(mentioning: root))", sourceLocation: sourceLocation)
        } else {
            Issue.record("the probe printed no jail.root\n\(r)", sourceLocation: sourceLocation)
        }
        #expect(mounts(mentioning: "swiftlet-jail").isEmpty, "a jail tmpfs is mounted on the host", sourceLocation: sourceLocation)
    }
}
