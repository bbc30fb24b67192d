import Glibc
@testable import SwiftletJail
import Testing

/// What needs no root: parsing the cgroup layout, the outcome's report, the
/// bind path checks.
@Suite struct JailUnitTests {
    static let hybridMountinfo = """
        31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
        32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        """
    static let hybridCgroup = """
        9:name=systemd:/
        8:pids:/
        4:memory:/process_api/80a5
        1:cpu,cpuacct:/
        0::/
        """

    @Test("hybrid: memory, pids and cpu come from their v1 mounts (under the current cgroup), not the empty unified one")
    func hybridLayout() {
        let layout = CgroupLayout.parse(mountinfo: Self.hybridMountinfo, cgroup: Self.hybridCgroup) { _ in "" }
        #expect(layout.hierarchies["memory"] == CgroupHierarchy(version: .v1, controllers: ["memory"], currentDirectory: "/sys/fs/cgroup/memory/process_api/80a5"))
        #expect(layout.hierarchies["pids"]?.currentDirectory == "/sys/fs/cgroup/pids")
        #expect(layout.hierarchies["cpu"] == CgroupHierarchy(version: .v1, controllers: ["cpu", "cpuacct"], currentDirectory: "/sys/fs/cgroup/cpu,cpuacct"))
    }

    @Test("pure v2: every controller the current cgroup offers, in one directory")
    func unifiedLayout() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
        var asked: [String] = []
        let layout = CgroupLayout.parse(mountinfo: mountinfo, cgroup: "0::/user.slice/run-1.scope\n") { dir in
            asked.append(dir)
            return "cpuset cpu io memory pids\n"
        }
        #expect(asked == ["/sys/fs/cgroup/user.slice/run-1.scope"])
        for c in ["memory", "pids", "cpu"] {
            #expect(layout.hierarchies[c] == CgroupHierarchy(version: .v2, controllers: ["cpuset", "cpu", "io", "memory", "pids"], currentDirectory: "/sys/fs/cgroup/user.slice/run-1.scope"))
        }
        // Without controllers offered (a v2 cgroup that delegates none), none is found.
        let bare = CgroupLayout.parse(mountinfo: mountinfo, cgroup: "0::/a\n") { _ in "" }
        #expect(bare.hierarchies.isEmpty)
        #expect(throws: JailError.noController("memory")) { try bare.hierarchies(for: ["memory"]) }
    }

    @Test("a container's mount of its own subtree: the mount root is stripped from the path; escapes are undone")
    func containerLayout() {
        let mountinfo = #"50 40 0:32 /docker/abc /sys/fs/cgroup/mem\040ory ro - cgroup cgroup rw,memory"#
        let layout = CgroupLayout.parse(mountinfo: mountinfo, cgroup: "4:memory:/docker/abc/inner\n") { _ in "" }
        #expect(layout.hierarchies["memory"]?.currentDirectory == "/sys/fs/cgroup/mem ory/inner")
    }

    @Test("the outcome: 128+signal, and one report line only when the memory limit killed the VMM")
    func outcome() {
        var o = JailOutcome(status: .signaled(SIGKILL), oomKills: 1, killedByMemoryLimit: true, memoryMax: 48 << 20, forwardedSignal: 0)
        #expect(o.exitCode == 137)
        #expect(o.report == "swiftlet: the jail's memory limit (48 MiB) killed the VMM")
        o.killedByMemoryLimit = false
        #expect(o.report == nil)
        #expect(JailOutcome(status: .exited(3), oomKills: nil, killedByMemoryLimit: false, memoryMax: nil, forwardedSignal: 0).exitCode == 3)
    }

    @Test("bind directories: absolute, existing directories only; never /; normalized and deduplicated")
    func bindPaths() throws {
        #expect(try JailRoot.normalize(binds: ["/tmp/", "//tmp"]) == ["/tmp"])
        for bad in ["tmp", "/", "/tmp/../etc", "/nonexistent-swiftlet-dir", "/etc/hostname"] {
            #expect(throws: JailError.self, "\(bad)") { try JailRoot.normalize(binds: [bad]) }
        }
    }

    @Test("leaf names carry the owner pid")
    func ownerNames() {
        #expect(ownerPid(ofName: "1234-00ff00ff") == 1234)
        #expect(ownerPid(ofName: "cgroup.procs") == nil)
        #expect(ownerPid(ofName: "-12") == nil)
    }

    @Test("the default task limit leaves room for the VMM's threads")
    func pidsDefault() {
        #expect(JailConfig.defaultPidsMax == 64)
        #expect(JailConfig.pidsMax(vcpus: 2) == 64)
        #expect(JailConfig.pidsMax(vcpus: 64) == 96)
    }
}

/// The jail itself, through `swiftlet-jail-probe` (as root).
@Suite(.enabled(if: RootGate.enabled, RootGate.skipMessage), .serialized)
struct JailProbeTests {
    static let mib: UInt64 = 1 << 20

    @Test("confined: dynamic uid that cannot regain root, every namespace new, / holds only the bound path (read-only), limits set, nothing left")
    func confined() throws {
        try RootGate.requireRoot()
        let bind = try Probe.tempDirectory()
        defer { rmdir(bind) }
        let r = try Probe.run(["--mem", String(64 * Self.mib), "--pids", "32", "--cpu", "50000/100000", "--bind", bind])
        #expect(r.exitCode == 0, "\(r)")
        #expect(r.stderr.isEmpty, "\(r)")

        // Credentials: real, effective, saved, fs all the same unprivileged id.
        let uids = (r["uid"] ?? "").split(separator: ",").compactMap { UInt32($0) }
        #expect(uids.count == 4 && Set(uids).count == 1, "\(r)")
        if let uid = uids.first { #expect(DynamicID.range.contains(uid), "uid \(uid) outside the dynamic range") }
        #expect(r["gid"] == r["uid"], "\(r)")
        #expect(r["groups"] == "", "\(r)")
        #expect(r["capeff"] == "0000000000000000", "\(r)")
        #expect(r["setuid0"] == "failed:\(EPERM)", "\(r)")

        // Namespaces: each differs from the host's, and the jail is pid 1.
        for ns in ["mnt", "pid", "net", "ipc", "uts"] {
            let inside = r["ns.\(ns)"], host = r["host.ns.\(ns)"]
            #expect(inside != nil && host != nil && inside != host && !(inside ?? "").hasPrefix("error"), "\(ns): \(inside ?? "-") vs host \(host ?? "-")")
        }
        #expect(r["pid"] == "1")
        #expect(r["hostname"] == "swiftlet")

        // The root: only the first component of the bound path; read-only;
        // the bound directory itself writable.
        #expect(r["root.entries"] == "tmp", "\(r)")
        #expect(r["root.mkdir"] == "failed:\(EROFS)", "\(r)")
        #expect(r["bind.write"] == "\(bind) ok", "\(r)")

        // The limits as the kernel reads them back.
        #expect(r["cgroup.memory.max"] == String(64 * Self.mib))
        #expect(r["cgroup.pids.max"] == "32")
        #expect(r["cgroup.cpu.max"] == "50000/100000")
        let layout = try CgroupLayout.current()
        let lines = r.values("cgroup.leaf")
        for c in ["memory", "pids", "cpu"] {
            let h = try #require(layout.hierarchies[c])
            let line = lines.first { $0.split(separator: " ").last?.split(separator: ",").contains(Substring(c)) ?? false }
            let leaf = String((line ?? "").split(separator: " ").first ?? "")
            #expect(leaf.hasPrefix(h.currentDirectory + "/swiftlet/\(r["supervisor.pid"] ?? "?")-"), "\(c) leaf \(leaf) not under \(h.currentDirectory)/swiftlet")
            #expect((line ?? "").contains(h.version == .v1 ? " v1 " : " v2 "))
        }
        Probe.expectNothingLeft(r)
    }

    @Test("an explicit --uid/--gid is used as given")
    func explicitIDs() throws {
        try RootGate.requireRoot()
        let r = try Probe.run(["--uid", "4242", "--gid", "4343", "--keep-net"])
        #expect(r.exitCode == 0, "\(r)")
        #expect(r["uid"] == "4242,4242,4242,4242")
        #expect(r["gid"] == "4343,4343,4343,4343")
        #expect(r["setuid0"] == "failed:\(EPERM)")
        // --keep-net: the host's network namespace; the others still new.
        #expect(r["ns.net"] == r["host.ns.net"])
        #expect(r["ns.mnt"] != r["host.ns.mnt"])
        #expect(r["root.entries"] == "", "no bind: an empty root")
        Probe.expectNothingLeft(r)
    }

    @Test("past the memory limit: killed, one report line, exit status 137, nothing left")
    func memoryLimit() throws {
        try RootGate.requireRoot()
        let r = try Probe.run(["--mem", String(48 * Self.mib), "oom"])
        #expect(r.exitCode == 137, "\(r)")
        #expect(r["outcome.status"] == "signaled:\(SIGKILL)", "\(r)")
        #expect(Int(r["outcome.oom_kills"] ?? "") ?? 0 >= 1, "\(r)")
        #expect(r.stderr == "swiftlet: the jail's memory limit (48 MiB) killed the VMM\n", "\(r)")
        #expect(r["oom.survived"] == nil, "\(r)")
        Probe.expectNothingLeft(r)
    }

    @Test("pids.max stops a fork bomb")
    func pidsLimit() throws {
        try RootGate.requireRoot()
        let r = try Probe.run(["--pids", "16", "forkbomb"])
        #expect(r.exitCode == 0, "\(r)")
        let started = Int(r["fork.started"] ?? "") ?? -1
        #expect(started >= 0 && started < 16, "\(r)")
        #expect(r["fork.errno"] == String(EAGAIN), "\(r)")
        Probe.expectNothingLeft(r)
    }

    @Test("SIGTERM to the supervisor reaches the jailed child (pid 1 of its namespace): 143")
    func sigtermForwarded() throws {
        try RootGate.requireRoot()
        let p = try Probe.start(["sleep", "30"])
        #expect(p.waitForLine("sleeping"))
        kill(p.pid, SIGTERM)
        let r = p.wait()
        #expect(r.exitCode == 128 + SIGTERM, "\(r)")
        #expect(r["outcome.forwarded"] == String(SIGTERM), "\(r)")
        #expect(r.stderr.isEmpty, "\(r)")
        Probe.expectNothingLeft(r)
    }

    @Test("SIGKILL of the jailed child: the supervisor reports 137 (no memory line) and removes everything")
    func sigkillChild() throws {
        try RootGate.requireRoot()
        let p = try Probe.start(["--mem", String(64 * Self.mib), "sleep", "30"])
        #expect(p.waitForLine("sleeping"))
        let child = try #require(p.output()["child.hostpid"].flatMap { pid_t($0) })
        kill(child, SIGKILL)
        let r = p.wait()
        #expect(r.exitCode == 137, "\(r)")
        #expect(r["outcome.status"] == "signaled:\(SIGKILL)", "\(r)")
        #expect(r.stderr.isEmpty, "not an OOM kill: \(r)")
        Probe.expectNothingLeft(r)
    }

    @Test("SIGKILL of the supervisor: the child dies with it; the next run's sweep removes the leftovers")
    func sigkillSupervisor() throws {
        try RootGate.requireRoot()
        let p = try Probe.start(["--mem", String(64 * Self.mib), "sleep", "30"])
        #expect(p.waitForLine("sleeping"))
        let child = try #require(p.output()["child.hostpid"])
        kill(p.pid, SIGKILL)
        let killed = p.wait()
        #expect(killed.signal == SIGKILL)
        #expect(Probe.dead(child), "the jailed child \(child) outlived its supervisor")
        // No mount ever reached the host, even now.
        if let root = killed["jail.root"] { #expect(Probe.mounts(mentioning: root).isEmpty) }

        let next = try Probe.run(["exit", "0"])
        #expect(next.exitCode == 0, "\(next)")
        Probe.expectNothingLeft(killed)
        Probe.expectNothingLeft(next)
    }

    @Test("not root: one line on stderr, exit status 1")
    func notRoot() throws {
        try RootGate.requireRoot()
        try #require(access("/usr/bin/setpriv", X_OK) == 0, "setpriv (util-linux) is needed to drop to nobody")
        let r = try Probe.run(["exit", "0"], prefix: ["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"])
        #expect(r.exitCode == 1, "\(r)")
        #expect(r.stdout.isEmpty, "\(r)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(r)")
        #expect(r.stderr.contains("the jail needs root (effective uid is 65534)"), "\(r)")
    }
}

/// The pieces in-process, as root.
@Suite(.enabled(if: RootGate.enabled, RootGate.skipMessage), .serialized)
struct JailPartsTests {
    @Test("dynamic ids: concurrent holders get different ids; a freed id can be taken again; a full range says so")
    func dynamicIDs() throws {
        try RootGate.requireRoot()
        let range: Range<UInt32> = 965_530..<965_532
        let a = try DynamicID.allocate(range: range)
        let b = try DynamicID.allocate(range: range)
        #expect(a.id != b.id)
        #expect(range.contains(a.id) && range.contains(b.id))
        #expect(throws: JailError.noFreeID(lower: 965_530, upper: 965_532)) { try DynamicID.allocate(range: range) }
        let freed = a.id
        a.closeDescriptor()
        let c = try DynamicID.allocate(range: range)
        #expect(c.id == freed)
        withExtendedLifetime(b) {}
    }

    @Test("a cgroup leaf: created under swiftlet/ with its limits, then removed; a dead owner's leaf and root are swept")
    func cgroupAndSweep() throws {
        try RootGate.requireRoot()
        let limits = CgroupLimits(memoryMax: 32 << 20, pidsMax: 8, cpuMax: CPUMax(quota: 20_000, period: 100_000))
        let cg = try Cgroup.create(limits: limits)
        #expect(cg.name.hasPrefix("\(getpid())-"))
        #expect(try cg.readLimits() == limits)
        #expect(cg.members().isEmpty)
        #expect(cg.oomKills() == 0)
        try cg.remove()
        for leaf in cg.leaves { #expect(access(leaf.path, F_OK) != 0, "\(leaf.path) left") }

        // A pid that is certainly dead: a child already reaped.
        let dead = fork()
        if dead == 0 { _exit(0) }
        var status: Int32 = 0
        waitpid(dead, &status, 0)
        let stale = try Cgroup.create(limits: CgroupLimits(pidsMax: 4), owner: dead)
        let staleRoot = try JailRoot.create(owner: dead)
        let live = try Cgroup.create(limits: CgroupLimits(pidsMax: 4))
        defer { try? live.remove() }
        // Gone afterwards (a probe run in another suite may sweep them first).
        Jail.sweepStale()
        for leaf in stale.leaves { #expect(access(leaf.path, F_OK) != 0, "\(leaf.path) not swept") }
        #expect(access(staleRoot.path, F_OK) != 0, "\(staleRoot.path) not swept")
        for leaf in live.leaves { #expect(access(leaf.path, F_OK) == 0, "a live owner's leaf was swept") }
    }
}
