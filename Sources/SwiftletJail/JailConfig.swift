import Glibc

/// What `--jail` confines the VMM with.
public struct JailConfig: Sendable, Equatable {
    /// The uid and gid to drop to; `nil` takes a `DynamicID` for the run
    /// (a uid given without a gid uses the uid's number for both).
    public var uid: uid_t?
    public var gid: gid_t?
    /// The cgroup's memory limit in bytes (guest memory plus a margin for
    /// the VMM itself); `nil` for none.
    public var memoryMax: UInt64?
    /// The cgroup's task limit (threads count).
    public var pidsMax: Int
    /// CPU bandwidth; `nil` for none.
    public var cpuMax: CPUMax?
    /// Stay in the host's network namespace (when a TAP must still be
    /// opened or configured after the jail is entered); otherwise a new,
    /// empty one (an already open TAP fd keeps working there).
    public var keepNet: Bool
    /// Host directories visible inside the jail, each at its own path (the
    /// vsock socket directory). Everything else is gone.
    public var bindDirectories: [String]
    /// Leave the jail's tmpfs root writable (normally read-only once the
    /// bound directories are in place).
    public var writableRoot: Bool
    /// The UTS namespace's hostname.
    public var hostname: String

    /// The default task limit: 64. `pids.max` counts threads, and a VMM has
    /// main + one per vCPU + devices + console-in or agent + memslots (ended
    /// before the guest runs) + KVM's per-VM worker task (Linux 6.13 and
    /// later; a task of the VMM's process, so in its cgroup), about vCPUs + 5.
    /// 64 leaves room for 32 vCPUs with a wide margin for glibc's and the
    /// Swift runtime's helpers, and still stops a fork bomb at 64. Use
    /// `pidsMax(vcpus:)` for more vCPUs.
    public static let defaultPidsMax = 64

    /// A task limit for `vcpus` vCPUs: vCPUs + 32, at least the default.
    public static func pidsMax(vcpus: Int) -> Int { max(defaultPidsMax, vcpus + 32) }

    public init(
        uid: uid_t? = nil, gid: gid_t? = nil, memoryMax: UInt64? = nil, pidsMax: Int = JailConfig.defaultPidsMax,
        cpuMax: CPUMax? = nil, keepNet: Bool = false, bindDirectories: [String] = [], writableRoot: Bool = false,
        hostname: String = "swiftlet"
    ) {
        self.uid = uid
        self.gid = gid
        self.memoryMax = memoryMax
        self.pidsMax = pidsMax
        self.cpuMax = cpuMax
        self.keepNet = keepNet
        self.bindDirectories = bindDirectories
        self.writableRoot = writableRoot
        self.hostname = hostname
    }

    public var limits: CgroupLimits { CgroupLimits(memoryMax: memoryMax, pidsMax: pidsMax, cpuMax: cpuMax) }
}
