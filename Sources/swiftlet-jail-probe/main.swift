// swiftlet-jail-probe [OPTIONS] [ACTION [ARG]]: jails itself the way
// `--jail` will (Jail.spawnSupervised, then Jail.enter in the child) and
// prints what it sees as key=value lines, for the jail tests. A test
// executable, so that `swiftlet` has no test hook.
//
// Options: --mem BYTES, --pids N, --cpu QUOTA/PERIOD, --uid N, --gid N,
// --keep-net, --writable-root, --bind DIR (repeatable).
// Actions (after the facts, inside the jail): facts (default), oom (touch
// memory until the limit kills it), forkbomb (fork until pids.max stops it),
// sleep SECONDS, exit CODE.
import Glibc
import SwiftletJail

func say(_ s: String, fd: Int32 = 1) {
    // Unbuffered: a test may kill the probe at any moment and reads what came before.
    let b = Array((s + "\n").utf8)
    // SAFETY: `b` outlives the write, which reads b.count bytes of it.
    _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

func fail(_ s: String, code: Int32 = 1) -> Never {
    say("swiftlet-jail-probe: \(s)", fd: 2)
    exit(code)
}

func readLink(_ dirfd: Int32, _ path: String) -> String {
    var buf = [CChar](repeating: 0, count: 256)
    let n = readlinkat(dirfd, path, &buf, buf.count - 1)
    guard n > 0 else { return "error:\(errno)" }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func readAt(_ dirfd: Int32, _ path: String) -> String {
    let fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

let namespaces = ["mnt", "pid", "net", "ipc", "uts"]

// ---- arguments --------------------------------------------------------------
var config = JailConfig()
var action = "facts"
var actionArg = ""
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    func value() -> String {
        guard let v = args.popFirst() else { fail("\(a) needs a value", code: 2) }
        return v
    }
    func number<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        guard let v = T(value()) else { fail("bad \(a)", code: 2) }
        return v
    }
    switch a {
    case "--mem": config.memoryMax = number(UInt64.self)
    case "--pids": config.pidsMax = number(Int.self)
    case "--cpu":
        let parts = value().split(separator: "/")
        guard parts.count == 2, let q = Int(parts[0]), let p = Int(parts[1]) else { fail("bad --cpu (QUOTA/PERIOD)", code: 2) }
        config.cpuMax = CPUMax(quota: q, period: p)
    case "--uid": config.uid = number(UInt32.self)
    case "--gid": config.gid = number(UInt32.self)
    case "--keep-net": config.keepNet = true
    case "--writable-root": config.writableRoot = true
    case "--bind": config.bindDirectories.append(value())
    default:
        action = a
        actionArg = args.popFirst() ?? ""
    }
}

// ---- the supervisor, before the fork -----------------------------------------
do { try Jail.requireRoot() } catch { fail("\(error)") }
let hostProc = open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
for ns in namespaces { say("host.ns.\(ns)=\(readLink(hostProc, "ns/\(ns)"))") }
say("supervisor.pid=\(getpid())")
close(hostProc)

let role: Role
do { role = try Jail.spawnSupervised(config) } catch { fail("\(error)") }

switch role {
case .supervisor(let outcome):
    switch outcome.status {
    case .exited(let c): say("outcome.status=exited:\(c)")
    case .signaled(let s): say("outcome.status=signaled:\(s)")
    }
    say("outcome.code=\(outcome.exitCode)")
    say("outcome.oom_kills=\(outcome.oomKills.map(String.init) ?? "unknown")")
    say("outcome.forwarded=\(outcome.forwardedSignal)")
    say("outcome.cleanup=\(outcome.cleanupError.map { "\($0)" } ?? "ok")")
    if let report = outcome.report { say(report, fd: 2) }
    exit(outcome.exitCode)

case .child(let context):
    // Before the jail: what only the host's view shows. /proc/self, kept as
    // a descriptor, still shows this process after the jail hides /proc.
    let proc = open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    say("child.hostpid=\(readLink(AT_FDCWD, "/proc/self"))")
    say("jail.root=\(context.root.path)")
    for leaf in context.cgroup.leaves {
        say("cgroup.leaf=\(leaf.path) \(leaf.version == .v1 ? "v1" : "v2") \(leaf.controllers.joined(separator: ","))")
    }
    do {
        let limits = try context.cgroup.readLimits()
        say("cgroup.memory.max=\(limits.memoryMax.map(String.init) ?? "max")")
        say("cgroup.pids.max=\(limits.pidsMax.map(String.init) ?? "max")")
        say("cgroup.cpu.max=\(limits.cpuMax.map { "\($0.quota)/\($0.period)" } ?? "max")")
    } catch {
        fail("reading the cgroup limits: \(error)")
    }
    do { try Jail.enter(context) } catch { fail("\(error)") }

    // Inside the jail.
    say("pid=\(getpid())")
    for line in readAt(proc, "status").split(separator: "\n") where line.hasPrefix("Uid:") || line.hasPrefix("Gid:") || line.hasPrefix("Groups:") || line.hasPrefix("CapEff:") {
        let parts = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        say("\(parts[0].dropLast().lowercased())=\(parts.dropFirst().joined(separator: ","))")
    }
    for ns in namespaces { say("ns.\(ns)=\(readLink(proc, "ns/\(ns)"))") }
    let setuidRC = setuid(0)
    say("setuid0=\(setuidRC == 0 ? "ok" : "failed:\(errno)")")
    let entries = listRoot()
    say("root.entries=\(entries.joined(separator: ","))")
    let mkdirRC = mkdir("/probe-write", 0o755)
    say("root.mkdir=\(mkdirRC == 0 ? "ok" : "failed:\(errno)")")
    var host = [CChar](repeating: 0, count: 65)
    gethostname(&host, 64)
    say("hostname=\(String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
    for dir in context.config.bindDirectories {
        let probe = dir + "/probe-\(getpid())"
        let fd = open(probe, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        say("bind.write=\(dir) \(fd >= 0 ? "ok" : "failed:\(errno)")")
        if fd >= 0 { close(fd); unlink(probe) }
    }

    switch action {
    case "facts":
        exit(0)
    case "exit":
        exit(Int32(actionArg) ?? 0)
    case "sleep":
        say("sleeping")
        sleep(UInt32(actionArg) ?? 30)
        exit(0)
    case "oom":
        say("allocating")
        var total = 0
        while total < 8 << 30 {
            guard let p = malloc(1 << 20) else { break }
            memset(p, 0x5a, 1 << 20)
            total += 1 << 20
        }
        say("oom.survived=\(total)")
        exit(0)
    case "forkbomb":
        var started = 0
        var lastErrno: Int32 = 0
        for _ in 0..<(context.config.pidsMax + 16) {
            let pid = fork()
            if pid == 0 {
                pause()
                _exit(0)
            }
            if pid < 0 {
                lastErrno = errno
                break
            }
            started += 1
        }
        say("fork.started=\(started)")
        say("fork.errno=\(lastErrno)")
        // The children go with this init.
        exit(0)
    default:
        fail("unknown action \(action)", code: 2)
    }
}

func listRoot() -> [String] {
    guard let dir = opendir("/") else { return ["error:\(errno)"] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        // SAFETY: d_name is a NUL-terminated array inside the entry readdir returned.
        let name = withUnsafePointer(to: &entry.pointee.d_name) {
            String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
