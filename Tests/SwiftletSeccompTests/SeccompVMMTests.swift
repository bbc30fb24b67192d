import Glibc
import SwiftletSys
import Testing

/// A running VMM: every one of its threads is under a seccomp filter
/// (`Seccomp: 2` in /proc/<pid>/task/*/status) once the guest runs.
@Suite(.enabled(if: access("/dev/kvm", R_OK | W_OK) == 0 || getenv("SWIFTLET_REQUIRE_KVM") != nil, "/dev/kvm is not usable here"), .serialized)
struct SeccompVMMTests {
    static var cache: String {
        if let d = getenv("SWIFTLET_CACHE") { return String(cString: d) }
        if let x = getenv("XDG_CACHE_HOME") { return String(cString: x) + "/swiftlet" }
        return String(cString: getenv("HOME") ?? strdup("/root")) + "/.cache/swiftlet"
    }
    static var imagesPresent: Bool {
        access(cache + "/default/bzImage", R_OK) == 0 && access(cache + "/default/rootfs.ext4", R_OK) == 0
    }

    @Test("swiftlet boot: every thread (main, devices, console-in, vcpus) runs under a filter")
    func bootThreadsFiltered() throws {
        try #require(Self.imagesPresent, "run `make images` first")
        let threads = try Self.filteredThreads(["boot", "--cpus", "2", "--timeout", "60"], roles: ["vcpu0", "vcpu1", "devices"])
        #expect(threads.contains("vcpu1"))
    }

    @Test("swiftlet run, booted (--cold) and restored from the cached snapshot: every thread (main, agent, devices, vcpu) runs under a filter",
          arguments: [true, false])
    func runThreadsFiltered(cold: Bool) throws {
        try #require(Self.imagesPresent, "run `make images` first")
        if !cold {
            // The cached snapshot exists first (its creation, a child process, runs under the same filters).
            let pid = try Self.spawn([Probe.productsDir + "/swiftlet", "snapshot", "cached"])
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            try #require(status == 0, "swiftlet snapshot cached failed")
        }
        let threads = try Self.filteredThreads(["run"] + (cold ? ["--cold"] : []) + ["--", "sleep", "8"], roles: ["vcpu0", "devices", "agent"])
        #expect(threads.contains("agent"))
    }

    /// Starts `swiftlet ARGS`, waits until the threads named `roles` exist,
    /// checks every thread's seccomp state, then stops it. Returns the thread names.
    static func filteredThreads(_ args: [String], roles: Set<String>) throws -> [String] {
        let pid = try spawn([Probe.productsDir + "/swiftlet"] + args)
        defer {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        let deadline = time(nil) + 120
        var last: [Thread] = []
        while time(nil) < deadline {
            last = threads(of: pid)
            // Everything is started, and the main thread has filtered itself (the vCPUs run).
            if roles.isSubset(of: Set(last.map(\.name))), !last.isEmpty, last.allSatisfy({ $0.seccomp == "2" }) { break }
            usleep(100_000)
        }
        try #require(!last.isEmpty, "no threads seen")
        #expect(roles.isSubset(of: Set(last.map(\.name))), "threads: \(last)")
        for t in last {
            #expect(t.seccomp == "2", "thread \(t.name): Seccomp \(t.seccomp)")
            #expect(t.filters >= 1, "thread \(t.name): \(t.filters) filters")
            #expect(t.noNewPrivs == "1", "thread \(t.name): NoNewPrivs \(t.noNewPrivs)")
            #expect(t.capEff == "0000000000000000", "thread \(t.name): CapEff \(t.capEff)")
        }
        return last.map(\.name)
    }

    struct Thread: CustomStringConvertible {
        var name = "", seccomp = "", filters = 0, noNewPrivs = "", capEff = ""
        var description: String { "\(name): Seccomp \(seccomp) filters \(filters) NoNewPrivs \(noNewPrivs) CapEff \(capEff)" }
    }

    /// Name, seccomp state, no_new_privs and effective capabilities of every thread of `pid`.
    static func threads(of pid: pid_t) -> [Thread] {
        var out: [Thread] = []
        for tid in listDirectory("/proc/\(pid)/task") {
            guard tid.first?.isNumber == true else { continue }
            let status = Probe.readText("/proc/\(pid)/task/\(tid)/status")
            var t = Thread()
            for line in status.split(separator: "\n") {
                let parts = line.split(separator: "\t", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let value = parts[1].trimmingCharacters(in: " ")
                switch parts[0] {
                case "Name:": t.name = value
                case "Seccomp:": t.seccomp = value
                case "Seccomp_filters:": t.filters = Int(value) ?? 0
                case "NoNewPrivs:": t.noNewPrivs = value
                case "CapEff:": t.capEff = value
                default: break
                }
            }
            if !t.name.isEmpty { out.append(t) }
        }
        return out
    }

    static func spawn(_ argv: [String]) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        try #require(rc == 0, "spawn \(argv[0]): \(rc)")
        return pid
    }
}

extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        String(drop { $0 == set || $0 == " " }.reversed().drop { $0 == set || $0 == " " }.reversed())
    }
}
