import CJail
import Glibc
import SwiftletSys

/// What `Jail.spawnSupervised` returns in each process after the fork.
public enum Role: Sendable {
    /// The jailed child: pid 1 of a new pid namespace, in the cgroup, still
    /// root and in the host's mounts. Open what the VMM needs (/dev/kvm,
    /// TAP, images), then call `Jail.enter(context)`.
    case child(JailContext)
    /// The supervisor, after the child ended and the cgroup and root
    /// directory are gone: exit with `outcome.exitCode`.
    case supervisor(JailOutcome)
}

/// What the child needs to enter the jail (and what it may report).
public struct JailContext: Sendable {
    public let config: JailConfig
    public let credentials: Credentials
    public let cgroup: Cgroup
    public let root: JailRoot
    /// The supervisor's pid (in the host's pid namespace).
    public let supervisorPid: pid_t
    /// The child's end of the socket pair to the supervisor, open for the
    /// child's life: it reads EOF once the supervisor is gone (see
    /// `Jail.enter`, which needs that after the uid change).
    public var supervisorLink: Int32 = -1

    /// Whether the supervisor is gone: its end of the link is closed.
    public func supervisorGone() -> Bool {
        guard supervisorLink >= 0 else { return false }
        var byte: UInt8 = 0
        let n = retryingEINTR { recv(supervisorLink, &byte, 1, Int32(MSG_DONTWAIT) | Int32(MSG_PEEK)) }
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    }
}

/// How the jailed child ended.
public struct JailOutcome: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
    }
    public var status: Status
    /// OOM kills the cgroup's memory limit made (nil: the kernel does not say).
    public var oomKills: Int?
    /// The memory limit killed the child itself.
    public var killedByMemoryLimit: Bool
    /// The memory limit, for the report.
    public var memoryMax: UInt64?
    /// The last termination signal the supervisor forwarded, or 0.
    public var forwardedSignal: Int32
    /// Removing the cgroup or the root directory failed (what is left goes
    /// at the next run's sweep); nil when everything is gone.
    public var cleanupError: JailError?

    public init(status: Status, oomKills: Int?, killedByMemoryLimit: Bool, memoryMax: UInt64?, forwardedSignal: Int32, cleanupError: JailError? = nil) {
        self.status = status
        self.oomKills = oomKills
        self.killedByMemoryLimit = killedByMemoryLimit
        self.memoryMax = memoryMax
        self.forwardedSignal = forwardedSignal
        self.cleanupError = cleanupError
    }

    /// The shell's convention: the exit code, or 128 + the signal.
    public var exitCode: Int32 {
        switch status {
        case .exited(let c): return c
        case .signaled(let s): return 128 + s
        }
    }

    /// One line for stderr when the memory limit killed the VMM, else nil.
    public var report: String? {
        guard killedByMemoryLimit else { return nil }
        let limit = memoryMax.map { "\($0 >> 20) MiB" } ?? "unknown"
        return "swiftlet: the jail's memory limit (\(limit)) killed the VMM"
    }
}

/// The jailer (like Firecracker's): a supervisor process outside, and the
/// VMM as pid 1 of new pid, mount, IPC, UTS (and net) namespaces, in a
/// cgroup leaf, on a root that holds only the bound directories, as an
/// unprivileged uid.
public enum Jail {
    /// Throws `.notRoot` unless the effective uid is 0.
    public static func requireRoot() throws(JailError) {
        let euid = geteuid()
        guard euid == 0 else { throw .notRoot(euid: euid) }
    }

    /// Removes what supervisors killed by SIGKILL left: cgroup leaves and
    /// jail root directories whose owner pid is gone. Returns the paths.
    @discardableResult
    public static func sweepStale() -> [String] {
        Cgroup.sweepStale() + JailRoot.sweepStale() + SocketDirectory.sweepStale()
    }

    /// Forks the jailed child in a new pid namespace under a supervisor.
    ///
    /// **Call it first thing**, before any thread exists and before opening
    /// /dev/kvm or creating a VM: fork copies only the calling thread, and a
    /// KVM VM fd belongs to the mm of the process that created it (the child
    /// could not use one the parent made). It throws `.threaded` otherwise.
    ///
    /// The supervisor (the calling process) sweeps stale leftovers, takes a
    /// dynamic uid if none is configured, creates the cgroup and the root
    /// directory, `unshare(CLONE_NEWPID)`s (only its children enter the new
    /// namespace) and forks. It puts the child in the cgroup, then lets it
    /// go on through a socket pair; it forwards SIGINT, SIGTERM and SIGHUP to the
    /// child, waits for it, and removes the cgroup and root directory on
    /// every path before returning `.supervisor(outcome)`. The process
    /// must not fork again afterwards: its pid namespace died with the child.
    ///
    /// The child sets PR_SET_PDEATHSIG(SIGKILL), so it dies with the
    /// supervisor, and returns `.child(context)` only once the supervisor has
    /// put it in the cgroup.
    public static func spawnSupervised(_ config: JailConfig) throws(JailError) -> Role {
        try requireRoot()
        let threads = threadCount()
        guard threads <= 1 else { throw .threaded(count: threads) }
        _ = try JailRoot.normalize(binds: config.bindDirectories)
        sweepStale()

        let me = getpid()
        var dynamic: DynamicID?
        let credentials: Credentials
        if let uid = config.uid {
            credentials = Credentials(uid: uid, gid: config.gid ?? uid)
        } else {
            let id = try DynamicID.allocate()
            dynamic = id
            credentials = Credentials(uid: id.id, gid: config.gid ?? id.id)
        }
        let cgroup = try Cgroup.create(limits: config.limits, owner: me)
        let root: JailRoot
        do throws(JailError) { root = try JailRoot.create(owner: me) } catch {
            try? cgroup.remove()
            throw error
        }
        var context = JailContext(config: config, credentials: credentials, cgroup: cgroup, root: root, supervisorPid: me)
        // Best effort on the error paths; the outcome reports a failure on
        // the normal one. What stays is swept by the next run.
        var cleanupError: JailError?
        func cleanUp() {
            do throws(JailError) { try cgroup.remove() } catch { cleanupError = cleanupError ?? error }
            do throws(JailError) { try root.remove() } catch { cleanupError = cleanupError ?? error }
        }

        // The child waits for a go byte on this pair; EOF means the
        // supervisor died or failed. A socket, not a pipe, so that the go
        // write to a child already dead fails with EPIPE (MSG_NOSIGNAL)
        // instead of killing the supervisor by SIGPIPE.
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            cleanUp()
            throw .last("socketpair")
        }
        let (goRead, goWrite) = (fds[0], fds[1])
        guard swl_jail_unshare(SWL_JAIL_CLONE_NEWPID) == 0 else {
            let e = JailError.last("unshare(NEWPID)")
            close(goRead); close(goWrite)
            cleanUp()
            throw e
        }
        // Blocked across fork: a signal that arrives before the supervisor's
        // handlers exist stays pending and is forwarded once they do.
        _ = swl_jail_block_termination()
        let pid = fork()
        if pid < 0 {
            let e = JailError.last("fork")
            _ = swl_jail_restore_mask()
            close(goRead); close(goWrite)
            cleanUp()
            throw e
        }
        if pid == 0 {
            // The child: pid 1 of the new pid namespace.
            _ = swl_jail_child_termination()
            _ = swl_jail_set_pdeathsig(SIGKILL)
            close(goWrite)
            dynamic?.closeDescriptor()
            // getppid() cannot tell whether the supervisor died before
            // PR_SET_PDEATHSIG took effect: the parent is outside this pid
            // namespace, so it reads 0 either way. The socket does: a dead
            // supervisor's write end is closed, and the read gets EOF.
            var go: UInt8 = 0
            let n = recv(goRead, &go, 1, 0)
            if n != 1 || go != UInt8(ascii: "g") { _exit(1) }
            // Kept open: Jail.enter checks it again after the uid change.
            context.supervisorLink = goRead
            return .child(context)
        }

        // The supervisor.
        close(goRead)
        _ = swl_jail_forward_termination(pid)
        var joined: JailError?
        do throws(JailError) { try cgroup.add(pid: pid) } catch { joined = error }
        if joined == nil {
            var go = UInt8(ascii: "g")
            if send(goWrite, &go, 1, Int32(MSG_NOSIGNAL)) != 1 { joined = .last("send(jail go byte)") }
        }
        if joined != nil { _ = kill(pid, SIGKILL) }
        var status: Int32 = 0
        var waitError: JailError?
        if retryingEINTR({ waitpid(pid, &status, 0) }) < 0 { waitError = .last("waitpid(\(pid))") }
        swl_jail_stop_forwarding()
        // Closed only now: the child reads EOF on its end when the supervisor is gone.
        close(goWrite)
        if let error = waitError ?? joined {
            cleanUp()
            _ = swl_jail_default_termination()
            throw error
        }
        let outcomeStatus: JailOutcome.Status = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        let oomKills = cgroup.oomKills()
        let killedBySIGKILL = outcomeStatus == .signaled(SIGKILL)
        // With a counter: the child died by SIGKILL and the limit killed
        // something. Without one (an old v1 kernel): SIGKILL after hitting the limit.
        let byLimit = config.memoryMax != nil && killedBySIGKILL
            && ((oomKills ?? 0) > 0 || (oomKills == nil && cgroup.memoryLimitHit()))
        // The child was the namespace's init: its death killed every other
        // member. The leaf may still be busy for a moment; remove retries.
        cleanUp()
        _ = swl_jail_default_termination()
        return .supervisor(JailOutcome(
            status: outcomeStatus, oomKills: oomKills, killedByMemoryLimit: byLimit,
            memoryMax: config.memoryMax, forwardedSignal: swl_jail_last_forwarded(),
            cleanupError: cleanupError
        ))
    }

    /// In the child, after it opened what the VMM needs: new mount, IPC,
    /// UTS (and net) namespaces, the root with only the bound directories,
    /// then the unprivileged uid/gid. Afterwards the process holds
    /// descriptors, not paths.
    public static func enter(_ context: JailContext) throws(JailError) {
        let config = context.config
        try Namespaces.unshare(keepNet: config.keepNet)
        try Namespaces.makeMountsPrivate()
        let rc = config.hostname.withCString { sethostname($0, strlen($0)) }
        guard rc == 0 else { throw .last("sethostname(\(config.hostname))") }
        try context.root.enter(binds: config.bindDirectories, writable: config.writableRoot)
        try context.credentials.apply()
        // Changing the effective uid or gid clears PR_SET_PDEATHSIG: set it
        // again, then check that the supervisor did not die in between (its
        // SIGKILL would have been lost). Without this a supervisor killed by
        // SIGKILL leaves its jailed child running.
        guard swl_jail_set_pdeathsig(SIGKILL) == 0 else { throw .last("prctl(PR_SET_PDEATHSIG)") }
        if context.supervisorGone() { _exit(1) }
    }

    /// The number of threads of this process (from /proc/self/status).
    static func threadCount() -> Int {
        guard let status = try? readText("/proc/self/status") else { return 1 }
        for line in status.split(separator: "\n") where line.hasPrefix("Threads:") {
            return Int(line.dropFirst("Threads:".count).trimmingPrefix(while: { $0 == "\t" || $0 == " " })) ?? 1
        }
        return 1
    }
}
