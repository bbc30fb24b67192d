import Glibc
import SwiftletSys
import Testing
import SwiftletTestSupport

/// `swiftlet run --jail` and `boot --jail` end to end (README, Security: the
/// jailer). The mechanisms have their own tests (SwiftletJailTests, through
/// swiftlet-jail-probe); these check what a user of the CLI gets: a jailed
/// run behaves as an unjailed one, its VMM runs as an unprivileged uid in
/// namespaces of its own, on a root that holds only its socket directory, in
/// a cgroup with the limits asked for, and nothing is left afterwards on any
/// exit path, SIGKILL included.
@Suite(.serialized, .enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct JailCLITests {
    static func requireRoot() throws {
        try #require(geteuid() == 0, "the jail tests need root")
    }

    /// The jailed VMM: the supervisor's child, once it has dropped to its uid
    /// (it is then inside the jail). Nil if it never gets there.
    static func jailedVMM(of supervisor: pid_t, seconds: Int = 60) -> pid_t? {
        let deadline = time(nil) + seconds
        while time(nil) <= deadline {
            for entry in listDirectory("/proc") {
                guard let pid = pid_t(entry) else { continue }
                let status = CLI.readText("/proc/\(pid)/status")
                guard field("PPid", status) == "\(supervisor)" else { continue }
                if let uid = field("Uid", status)?.split(separator: "\t").first, uid != "0" { return pid }
            }
            usleep(20_000)
        }
        return nil
    }

    static func field(_ name: String, _ status: String) -> String? {
        status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1).drop { $0 == "\t" || $0 == " " }) }
    }

    static func readlinkText(_ path: String) -> String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink(path, &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    }

    /// A controller's directory for `pid` (cgroup v1 `N:controller:/path`, else v2 `0::/path`).
    static func cgroupDirectory(_ controller: String, of pid: pid_t) -> String? {
        for line in CLI.readText("/proc/\(pid)/cgroup").split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[1].split(separator: ",").contains(Substring(controller)) { return "/sys/fs/cgroup/\(parts[1])\(parts[2])" }
        }
        return nil
    }

    /// Whatever a supervisor `pid` may have left: cgroup leaves, jail roots,
    /// socket directories, mounts.
    static func leftovers(of supervisor: pid_t) -> [String] {
        var found: [String] = []
        for base in ["/run/swiftlet/jail", "/run/swiftlet/sockets"] {
            found += listDirectory(base).filter { $0.hasPrefix("\(supervisor)-") }.map { base + "/" + $0 }
        }
        for controller in ["memory", "pids", "cpu"] {
            guard let mine = cgroupDirectory(controller, of: getpid()) else { continue }
            let parent = mine + "/swiftlet"
            found += listDirectory(parent).filter { $0.hasPrefix("\(supervisor)-") }.map { parent + "/" + $0 }
        }
        found += CLI.readText("/proc/self/mountinfo").split(separator: "\n").filter { $0.contains("swiftlet-jail") }.map(String.init)
        return found
    }

    @Test("a jailed run: the command's output, stdin and exit status as without the jail; --timeout; nothing left")
    func jailedRunBehavesAsARun() throws {
        try Self.requireRoot()
        try RunTests.requireImages()
        let input = try CLI.writeFile(Array("from stdin\n".utf8))
        defer { unlink(input) }
        let r = try CLI.run(["run", "--jail", "--env", "GREETING=hi", "--", "sh", "-c", "cat; echo \"$GREETING\"; echo err >&2; exit 7"], stdin: input)
        #expect(r.status == 7, "stderr: \(r.stderr)")
        #expect(r.stdout == "from stdin\nhi\n")
        #expect(r.stderr == "err\n")
        let t = try CLI.run(["run", "--jail", "--timeout", "1", "--", "sleep", "30"])
        #expect(t.status == 124, "stderr: \(t.stderr)")
        #expect(t.stderrLines.count == 1, "stderr: \(t.stderr)")
    }

    @Test("inside: an unprivileged uid, namespaces of its own, a root with only its socket directory, the cgroup limits; all gone after")
    func whatTheJailedVMMSees() throws {
        try Self.requireRoot()
        try RunTests.requireImages()
        let run = try CLI.start(["run", "--jail", "--jail-cpus", "0.5", "--jail-pids", "48", "--", "sleep", "4"])
        let vmm = try #require(Self.jailedVMM(of: run.pid), "no jailed VMM appeared")
        let status = CLI.readText("/proc/\(vmm)/status")
        let uids = (Self.field("Uid", status) ?? "").split(separator: "\t").compactMap { UInt32($0) }
        #expect(uids.count == 4 && Set(uids).count == 1 && (900_000..<965_536).contains(uids[0]), "Uid: \(uids)")
        let gids = (Self.field("Gid", status) ?? "").split(separator: "\t").compactMap { UInt32($0) }
        #expect(gids.count == 4 && Set(gids).count == 1 && gids[0] != 0, "Gid: \(gids)")
        #expect(Self.field("CapEff", status) == "0000000000000000")
        #expect(Self.field("NSpid", status)?.split(separator: "\t").last == "1", "pid 1 of its own pid namespace")
        for ns in ["mnt", "pid", "net", "ipc", "uts"] {
            let theirs = Self.readlinkText("/proc/\(vmm)/ns/\(ns)"), ours = Self.readlinkText("/proc/self/ns/\(ns)")
            #expect(!theirs.isEmpty && theirs != ours, "\(ns): \(theirs) vs \(ours)")
        }
        // Its root: the path to its socket directory and nothing else.
        let root = "/proc/\(vmm)/root"
        #expect(listDirectory(root).sorted() == ["run"])
        #expect(listDirectory(root + "/run").sorted() == ["swiftlet"])
        #expect(listDirectory(root + "/run/swiftlet").sorted() == ["sockets"])
        let sockets = listDirectory(root + "/run/swiftlet/sockets").sorted()
        #expect(sockets.count == 1 && sockets[0].hasPrefix("\(run.pid)-"), "\(sockets)")
        #expect(listDirectory(root + "/run/swiftlet/sockets/" + (sockets.first ?? "")).sorted() == ["vsock", "vsock_52"])
        // Its cgroup: guest memory (128 MiB) + the 64 MiB margin, 48 tasks, half a CPU.
        let memory = try #require(Self.cgroupDirectory("memory", of: vmm))
        let pids = try #require(Self.cgroupDirectory("pids", of: vmm))
        let cpu = try #require(Self.cgroupDirectory("cpu", of: vmm))
        #expect(memory.contains("/swiftlet/\(run.pid)-"), "\(memory)")
        if access(memory + "/memory.max", R_OK) == 0 {
            #expect(CLI.readText(memory + "/memory.max") == "\((128 + 64) << 20)\n")
            #expect(CLI.readText(cpu + "/cpu.max") == "50000 100000\n")
        } else {
            #expect(CLI.readText(memory + "/memory.limit_in_bytes") == "\((128 + 64) << 20)\n")
            #expect(CLI.readText(cpu + "/cpu.cfs_quota_us") == "50000\n")
        }
        #expect(CLI.readText(pids + "/pids.max") == "48\n")
        let r = try run.wait(seconds: 120)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(Self.leftovers(of: run.pid).isEmpty, "\(Self.leftovers(of: run.pid))")
    }

    static let interrupt = String(#filePath).split(separator: "/").dropLast(2).reduce("") { $0 + "/" + $1 } + "/security/terminal-interrupt.py"

    /// Ctrl-C on a terminal reaches the whole foreground process group: the
    /// supervisor and the jailed VMM. The supervisor used to pass it on as
    /// well, so `run` saw two and stopped at once (130) instead of letting the
    /// job handle it, as an unjailed run does.
    @Test("Ctrl-C on a terminal: the job's trap runs and its status comes back, jailed as unjailed")
    func terminalInterrupt() throws {
        try Self.requireRoot()
        try RunTests.requireImages()
        let job = "trap 'echo got INT; exit 3' INT; echo started; sleep 20; echo missed"
        for jail in [[], ["--jail"]] {
            let out = try CLI.tempFile("pty"), err = try CLI.tempFile("pty-err")
            let driver = CLI.Running(pid: try CLI.spawn(["/usr/bin/python3", Self.interrupt, "started", CLI.binary, "run"] + jail + ["--", "sh", "-c", job],
                                                          stdout: out, stderr: err), stdoutPath: out, stderrPath: err)
            let r = try driver.wait(seconds: 180)
            #expect(r.stdout.hasPrefix("status=3 ") && r.stdout.contains("got INT"), "\(jail): \(r.stdout) \(r.stderr)")
        }
    }

    @Test("SIGKILL of the jailed VMM, then of a supervisor: nothing is left (the next run sweeps what a killed supervisor left)")
    func sigkillLeavesNothing() throws {
        try Self.requireRoot()
        try RunTests.requireImages()
        let first = try CLI.start(["run", "--jail", "--", "sleep", "30"])
        let vmm = try #require(Self.jailedVMM(of: first.pid))
        kill(vmm, SIGKILL)
        let r = try first.wait(seconds: 60)
        #expect(r.status == 137, "stderr: \(r.stderr)")
        #expect(Self.leftovers(of: first.pid).isEmpty, "\(Self.leftovers(of: first.pid))")

        let second = try CLI.start(["run", "--jail", "--", "sleep", "30"])
        let vmm2 = try #require(Self.jailedVMM(of: second.pid))
        kill(second.pid, SIGKILL)
        _ = try second.wait(seconds: 60)
        // The VMM dies with its supervisor (PR_SET_PDEATHSIG).
        var gone = false
        for _ in 0..<500 where !gone {
            gone = kill(vmm2, 0) != 0 && errno == ESRCH
            if !gone { usleep(10_000) }
        }
        #expect(gone, "the jailed VMM outlived its supervisor")
        // The next jailed run sweeps the dead supervisor's cgroup leaves and directories.
        let third = try CLI.run(["run", "--jail", "--", "true"])
        #expect(third.status == 0, "stderr: \(third.stderr)")
        #expect(Self.leftovers(of: second.pid).isEmpty, "\(Self.leftovers(of: second.pid))")
    }

    @Test("without root, and with bad jail options: one line and the usual status")
    func refusals() throws {
        let nonRoot = try CLI.run(["run", "--jail", "--", "true"], asUser: "nobody")
        #expect(nonRoot.status == 125)
        #expect(nonRoot.stderrLines == ["swiftlet: error: the jail needs root (effective uid is 65534); run as root or without --jail"])
        let boot = try CLI.run(["boot", "--jail"], asUser: "nobody")
        #expect(boot.status == 1)
        #expect(boot.stderrLines.count == 1 && boot.stderr.contains("the jail needs root"), "\(boot.stderr)")
        for args in [["--uid", "1000"], ["--jail", "--uid", "0"], ["--jail", "--jail-pids", "0"], ["--jail", "--jail-cpus", "nan"],
                     ["--jail", "--jail-memory-margin", "-1"], ["--jail", "--vsock-uds", "/tmp/x.sock"]] {
            let r = try CLI.run(["run"] + args + ["--", "true"])
            #expect(r.status == 125, "\(args): \(r.stderr)")
            #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: "), "\(args): \(r.stderr)")
        }
    }
}
