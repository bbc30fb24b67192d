import Glibc
import SwiftletSys

/// The resource limits of a jail's cgroup leaf. `nil` leaves a limit unset.
public struct CgroupLimits: Sendable, Equatable {
    /// Memory (and, where the kernel offers it, memory plus swap) in bytes.
    public var memoryMax: UInt64?
    /// The most tasks (threads count, not only processes).
    public var pidsMax: Int?
    /// CPU bandwidth: `quota` microseconds of CPU time per `period`.
    public var cpuMax: CPUMax?

    public init(memoryMax: UInt64? = nil, pidsMax: Int? = nil, cpuMax: CPUMax? = nil) {
        self.memoryMax = memoryMax
        self.pidsMax = pidsMax
        self.cpuMax = cpuMax
    }
}

/// CPU bandwidth: `quota` µs of CPU time every `period` µs (2 CPUs: quota = 2 × period).
public struct CPUMax: Sendable, Equatable {
    public var quota: Int
    public var period: Int
    public init(quota: Int, period: Int = 100_000) {
        self.quota = quota
        self.period = period
    }
}

/// One mounted cgroup hierarchy and this process's cgroup in it.
public struct CgroupHierarchy: Sendable, Equatable {
    public enum Version: Sendable, Equatable { case v1, v2 }
    public var version: Version
    /// The controllers this hierarchy serves (v1: its mount options; v2:
    /// the current cgroup's `cgroup.controllers`).
    public var controllers: Set<String>
    /// The directory of the current process's cgroup in this hierarchy.
    public var currentDirectory: String
}

/// Where the controllers the jail uses (memory, pids, cpu) live: a v1
/// hierarchy each (hybrid or legacy systems), the unified v2 one, or none.
public struct CgroupLayout: Sendable, Equatable {
    public static let controllers = ["memory", "pids", "cpu"]
    /// Controller name to the hierarchy that serves it.
    public var hierarchies: [String: CgroupHierarchy]

    /// Reads /proc/self/mountinfo and /proc/self/cgroup (and each v2
    /// cgroup's `cgroup.controllers`).
    public static func current() throws(JailError) -> CgroupLayout {
        let mountinfo = try readText("/proc/self/mountinfo")
        let cgroup = try readText("/proc/self/cgroup")
        return parse(mountinfo: mountinfo, cgroup: cgroup) { dir in
            (try? readText(dir + "/cgroup.controllers")) ?? ""
        }
    }

    /// The layout described by the two /proc files. A v1 hierarchy wins over
    /// the unified one for a controller both name (a v1 mount claims it, so
    /// v2 cannot offer it anyway). `v2Controllers` reads a v2 cgroup's
    /// `cgroup.controllers` (a parameter so that tests can feed text).
    public static func parse(mountinfo: String, cgroup: String, v2Controllers: (String) -> String) -> CgroupLayout {
        // /proc/self/cgroup: "ID:controllers:path"; v2's line is "0::path".
        var v1Paths: [String: String] = [:]
        var v2Path: String?
        for line in cgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[0] == "0" && parts[1].isEmpty {
                v2Path = String(parts[2])
            } else {
                for c in parts[1].split(separator: ",") { v1Paths[String(c)] = String(parts[2]) }
            }
        }
        var result: [String: CgroupHierarchy] = [:]
        var v2: (mount: String, root: String)?
        for line in mountinfo.split(separator: "\n") {
            // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count > dash + 3 else { continue }
            let root = unescapeMountinfo(fields[3]), mountPoint = unescapeMountinfo(fields[4])
            let fsType = fields[dash + 1]
            if fsType == "cgroup2" {
                if v2 == nil { v2 = (mountPoint, root) }
                continue
            }
            guard fsType == "cgroup" else { continue }
            let options = Set(fields[dash + 3].split(separator: ",").map(String.init))
            for c in controllers where options.contains(c) && result[c] == nil {
                guard let path = v1Paths[c] else { continue }
                let served = options.intersection(v1Paths.keys)
                result[c] = CgroupHierarchy(version: .v1, controllers: served, currentDirectory: join(mountPoint, root: root, path: path))
            }
        }
        if let v2, let v2Path {
            let dir = join(v2.mount, root: v2.root, path: v2Path)
            let offered = Set(v2Controllers(dir).split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
            for c in controllers where result[c] == nil && offered.contains(c) {
                result[c] = CgroupHierarchy(version: .v2, controllers: offered, currentDirectory: dir)
            }
        }
        return CgroupLayout(hierarchies: result)
    }

    /// The host directory of cgroup `path` in a hierarchy mounted at
    /// `mountPoint` whose mount shows the hierarchy from `root` (a container
    /// may mount only its own subtree, or see paths relative to its cgroup
    /// namespace, where root is "/").
    static func join(_ mountPoint: String, root: String, path: String) -> String {
        var rel = path
        if root != "/" && (path == root || path.hasPrefix(root + "/")) { rel = String(path.dropFirst(root.count)) }
        if rel.hasPrefix("/") { rel.removeFirst() }
        if rel.isEmpty { return mountPoint }
        return mountPoint == "/" ? "/" + rel : mountPoint + "/" + rel
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountinfo(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        var bytes = Array(s.utf8)[...]
        while let b = bytes.popFirst() {
            if b == UInt8(ascii: "\\"), bytes.count >= 3,
               let v = UInt8(String(decoding: bytes.prefix(3), as: UTF8.self), radix: 8) {
                out.append(v)
                bytes = bytes.dropFirst(3)
            } else {
                out.append(b)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The distinct hierarchies serving `wanted` controllers, each with the
    /// wanted controllers it serves.
    func hierarchies(for wanted: [String]) throws(JailError) -> [(CgroupHierarchy, [String])] {
        var out: [(CgroupHierarchy, [String])] = []
        for c in wanted {
            guard let h = hierarchies[c] else { throw .noController(c) }
            if let i = out.firstIndex(where: { $0.0.currentDirectory == h.currentDirectory }) {
                out[i].1.append(c)
            } else {
                out.append((h, [c]))
            }
        }
        return out
    }
}

/// A jail's cgroup: one leaf, `<current cgroup>/swiftlet/<name>`, in every
/// hierarchy that serves a controller it limits (one directory on cgroup v2;
/// one per controller mount on v1 or hybrid systems).
///
/// The leaf name starts with the owning supervisor's pid
/// (`<pid>-<random>`), so `sweepStale()` can tell a leftover (its owner is
/// dead: killed by SIGKILL before it could remove the leaf) from a live one.
public struct Cgroup: Sendable, Equatable {
    /// One leaf directory and the controllers the jail uses through it.
    public struct Leaf: Sendable, Equatable {
        public var version: CgroupHierarchy.Version
        public var path: String
        public var controllers: [String]
    }

    /// The parent directory under the current cgroup that holds every leaf.
    public static let parentName = "swiftlet"

    public let name: String
    public let leaves: [Leaf]
    /// The limits asked for (what `readLimits()` should read back).
    public let limits: CgroupLimits

    /// Creates the leaf in every hierarchy that serves a requested limit
    /// (pids is always used: it is what `killAll` and a pid count rely on
    /// being bounded) and writes the limits. A partly created cgroup is
    /// removed before the error is thrown.
    public static func create(limits: CgroupLimits, owner: pid_t = getpid(), layout: CgroupLayout? = nil) throws(JailError) -> Cgroup {
        let resolved: CgroupLayout
        if let layout { resolved = layout } else { resolved = try CgroupLayout.current() }
        var wanted = ["pids"]
        if limits.memoryMax != nil { wanted.append("memory") }
        if limits.cpuMax != nil { wanted.append("cpu") }
        let name = "\(owner)-\(randomSuffix())"
        var leaves: [Leaf] = []
        do throws(JailError) {
            for (h, controllers) in try resolved.hierarchies(for: wanted) {
                let parent = h.currentDirectory + "/" + parentName
                try makeDirectory(parent)
                if h.version == .v2 { try enableControllers(controllers, below: h.currentDirectory, parent: parent) }
                let path = parent + "/" + name
                guard mkdir(path, 0o755) == 0 else { throw .last("mkdir(\(path))") }
                leaves.append(Leaf(version: h.version, path: path, controllers: controllers))
            }
            let cgroup = Cgroup(name: name, leaves: leaves, limits: limits)
            try cgroup.writeLimits()
            return cgroup
        } catch {
            for leaf in leaves { _ = rmdir(leaf.path) }
            throw error
        }
    }

    static func makeDirectory(_ path: String) throws(JailError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .last("mkdir(\(path))") }
    }

    /// cgroup v2: a leaf gets a controller only if every ancestor enables it
    /// in `cgroup.subtree_control`; enable what is missing in the current
    /// cgroup and in the `swiftlet` parent.
    static func enableControllers(_ controllers: [String], below current: String, parent: String) throws(JailError) {
        for dir in [current, parent] {
            let enabled = Set(((try? readText(dir + "/cgroup.subtree_control")) ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
            let missing = controllers.filter { !enabled.contains($0) }
            if missing.isEmpty { continue }
            do throws(JailError) {
                try writeText(dir + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " "))
            } catch {
                if case .system(let e) = error { throw .controllersUnavailable(path: dir, errno: e.errno) }
                throw error
            }
        }
    }

    func leaf(for controller: String) -> Leaf? { leaves.first { $0.controllers.contains(controller) } }

    func writeLimits() throws(JailError) {
        if let bytes = limits.memoryMax, let leaf = leaf(for: "memory") {
            switch leaf.version {
            case .v2:
                try writeText(leaf.path + "/memory.max", String(bytes))
                // No swap: the limit is the memory the VMM may use, not a
                // point past which it pages out.
                if exists(leaf.path + "/memory.swap.max") { try writeText(leaf.path + "/memory.swap.max", "0") }
            case .v1:
                // memory first: memsw may never be below it.
                try writeText(leaf.path + "/memory.limit_in_bytes", String(bytes))
                if exists(leaf.path + "/memory.memsw.limit_in_bytes") {
                    try writeText(leaf.path + "/memory.memsw.limit_in_bytes", String(bytes))
                }
            }
        }
        if let pids = limits.pidsMax, let leaf = leaf(for: "pids") {
            try writeText(leaf.path + "/pids.max", String(pids))
        }
        if let cpu = limits.cpuMax, let leaf = leaf(for: "cpu") {
            switch leaf.version {
            case .v2:
                try writeText(leaf.path + "/cpu.max", "\(cpu.quota) \(cpu.period)")
            case .v1:
                // The period first: a quota is checked against the current period.
                try writeText(leaf.path + "/cpu.cfs_period_us", String(cpu.period))
                try writeText(leaf.path + "/cpu.cfs_quota_us", String(cpu.quota))
            }
        }
    }

    /// The limits as the kernel reports them (`nil` where unlimited or unused).
    public func readLimits() throws(JailError) -> CgroupLimits {
        var out = CgroupLimits()
        func number(_ path: String) throws(JailError) -> UInt64? {
            UInt64(try readText(path).split(separator: "\n").first ?? "")
        }
        if let leaf = leaf(for: "memory") {
            let file = leaf.version == .v2 ? "/memory.max" : "/memory.limit_in_bytes"
            out.memoryMax = try number(leaf.path + file)
            // v1 reports "unlimited" as a page-rounded LONG_MAX.
            if let m = out.memoryMax, m >= UInt64(Int64.max) / 2 { out.memoryMax = nil }
        }
        if let leaf = leaf(for: "pids") {
            out.pidsMax = try number(leaf.path + "/pids.max").map { Int($0) }
        }
        if let leaf = leaf(for: "cpu") {
            switch leaf.version {
            case .v2:
                let parts = try readText(leaf.path + "/cpu.max").split(whereSeparator: { $0 == " " || $0 == "\n" })
                if parts.count == 2, let q = Int(parts[0]), let p = Int(parts[1]) { out.cpuMax = CPUMax(quota: q, period: p) }
            case .v1:
                let q = Int(try readText(leaf.path + "/cpu.cfs_quota_us").split(separator: "\n").first ?? "") ?? -1
                let p = Int(try readText(leaf.path + "/cpu.cfs_period_us").split(separator: "\n").first ?? "") ?? 0
                if q > 0 { out.cpuMax = CPUMax(quota: q, period: p) }
            }
        }
        return out
    }

    /// Moves process `pid` (and so every thread it starts later) into the
    /// leaf of every hierarchy.
    public func add(pid: pid_t) throws(JailError) {
        for leaf in leaves { try writeText(leaf.path + "/cgroup.procs", String(pid)) }
    }

    /// The member pids (as this process's pid namespace numbers them).
    public func members() -> [pid_t] {
        var pids = Set<pid_t>()
        for leaf in leaves {
            for line in ((try? readText(leaf.path + "/cgroup.procs")) ?? "").split(separator: "\n") {
                if let p = pid_t(line) { pids.insert(p) }
            }
        }
        return pids.sorted()
    }

    /// How many processes the memory limit's OOM killer killed: v2's
    /// `memory.events` `oom_kill`, v1's `memory.oom_control` `oom_kill`
    /// (Linux 4.13 and later). `nil` when the kernel does not count them
    /// (then `memoryLimitHit` is the best evidence) or no memory limit is set.
    public func oomKills() -> Int? {
        guard let leaf = leaf(for: "memory") else { return nil }
        let file = leaf.version == .v2 ? "/memory.events" : "/memory.oom_control"
        return Self.field("oom_kill", in: (try? readText(leaf.path + file)) ?? "")
    }

    /// Whether usage ever reached the memory limit (v2 `memory.events` `max`,
    /// v1 `memory.failcnt`): reclaim ran, not necessarily a kill.
    public func memoryLimitHit() -> Bool {
        guard let leaf = leaf(for: "memory") else { return false }
        switch leaf.version {
        case .v2: return (Self.field("max", in: (try? readText(leaf.path + "/memory.events")) ?? "") ?? 0) > 0
        case .v1: return (Int(((try? readText(leaf.path + "/memory.failcnt")) ?? "").split(separator: "\n").first ?? "") ?? 0) > 0
        }
    }

    /// The number after `key ` in a "key value" per line file.
    static func field(_ key: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 && parts[0] == key { return Int(parts[1]) }
        }
        return nil
    }

    /// SIGKILLs every member: `cgroup.kill` on v2 (Linux 5.14 and later),
    /// else SIGKILL to each pid in `cgroup.procs` until it stays empty (a
    /// member may fork meanwhile; pids.max bounds how many it can).
    public func killAll() {
        for leaf in leaves where leaf.version == .v2 && exists(leaf.path + "/cgroup.kill") {
            if (try? writeText(leaf.path + "/cgroup.kill", "1")) != nil { return }
        }
        for _ in 0..<100 {
            let pids = members()
            if pids.isEmpty { return }
            for p in pids { _ = kill(p, SIGKILL) }
            sleepMilliseconds(5)
        }
    }

    /// Removes every leaf. A leaf is busy while it has members, and for a
    /// moment after the last one exits (it leaves the cgroup as it dies,
    /// before its parent reaps it): retry, killing what is still there.
    public func remove(timeoutMilliseconds: Int = 5000) throws(JailError) {
        try Self.removeLeaves(leaves.map(\.path), timeoutMilliseconds: timeoutMilliseconds) { self.killAll() }
    }

    static func removeLeaves(_ paths: [String], timeoutMilliseconds: Int, kill: () -> Void) throws(JailError) {
        var pending = paths.filter(exists)
        var waited = 0
        while !pending.isEmpty {
            var busy: [String] = []
            for path in pending where rmdir(path) != 0 {
                let e = errno
                if e == ENOENT { continue }
                if e != EBUSY || waited >= timeoutMilliseconds { throw .system(SystemError("rmdir(\(path))", errno: e)) }
                busy.append(path)
            }
            pending = busy
            if pending.isEmpty { break }
            if waited % 100 == 0 { kill() }
            sleepMilliseconds(10)
            waited += 10
        }
    }

    /// Removes the leaves under every hierarchy's `swiftlet` parent whose
    /// owning supervisor is gone (killed before it could clean up; its
    /// child died with it by PDEATHSIG). A leftover that still has members
    /// gets them killed first: they are jailed processes whose supervisor
    /// died. Returns the paths removed. Best effort: an error leaves that
    /// leaf for the next sweep.
    ///
    /// A live owner pid keeps its leaves, even if the pid was reused by an
    /// unrelated process: such a leaf waits for a later sweep.
    @discardableResult
    public static func sweepStale(layout: CgroupLayout? = nil) -> [String] {
        guard let layout = layout ?? (try? CgroupLayout.current()) else { return [] }
        var removed: [String] = []
        var parents = Set<String>()
        for h in layout.hierarchies.values { parents.insert(h.currentDirectory + "/" + parentName) }
        for parent in parents.sorted() {
            for name in listDirectory(parent) {
                let path = parent + "/" + name
                guard let owner = ownerPid(ofName: name), !processAlive(owner), isDirectory(path) else { continue }
                let leaf = Cgroup(name: name, leaves: [Leaf(version: .v1, path: path, controllers: [])], limits: CgroupLimits())
                if (try? removeLeaves([path], timeoutMilliseconds: 1000, kill: { leaf.killAll() })) != nil { removed.append(path) }
            }
        }
        return removed
    }
}
