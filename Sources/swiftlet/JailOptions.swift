import ArgumentParser
import Glibc
import SwiftletJail
import SwiftletSys

/// `--jail` and its limits, shared by `boot` and `run` (README, Security:
/// "The jailer"). As root, the VMM then runs as pid 1 of new pid, mount,
/// IPC, UTS and net namespaces, in a cgroup leaf with memory, task and CPU
/// limits, on a root holding only its socket directory, as an unprivileged
/// uid; a supervisor process (this one) waits for it and cleans up.
struct JailArguments: ParsableArguments {
    @Flag(help: "Confine the VMM (needs root): new namespaces, a cgroup with limits, an empty root, an unprivileged uid.")
    var jail = false

    @Option(help: ArgumentHelp("With --jail: the uid to run as (default: a free one from 900000-965535).", valueName: "uid"))
    var uid: UInt32?

    @Option(help: ArgumentHelp("With --jail: the gid to run as (default: the uid's number).", valueName: "gid"))
    var gid: UInt32?

    @Option(help: ArgumentHelp("With --jail: the cgroup's memory limit above guest memory, in MiB (default 64).", valueName: "MiB"))
    var jailMemoryMargin: Int?

    @Option(help: ArgumentHelp("With --jail: the cgroup's task limit, threads included (default: the larger of 64 and vCPUs + 32).", valueName: "n"))
    var jailPids: Int?

    @Option(help: ArgumentHelp("With --jail: CPU time, in CPUs (1.5: 150 ms every 100 ms; default: no limit).", valueName: "cpus"))
    var jailCpus: Double?

    var options: JailOptions {
        JailOptions(jail: jail, uid: uid, gid: gid, jailMemoryMargin: jailMemoryMargin, jailPids: jailPids, jailCpus: jailCpus)
    }
}

/// The jail options as plain values (see `BootOptions`).
struct JailOptions {
    var jail = false
    var uid: UInt32?
    var gid: UInt32?
    var jailMemoryMargin: Int?
    var jailPids: Int?
    var jailCpus: Double?

    static let defaultMemoryMarginMiB = 64

    func validate() throws {
        guard jail || (uid == nil && gid == nil && jailMemoryMargin == nil && jailPids == nil && jailCpus == nil) else {
            throw ValidationError("--uid, --gid and --jail-* need --jail")
        }
        if uid == 0 || gid == 0 { throw ValidationError("--uid and --gid must not be 0: the jail runs the VMM unprivileged") }
        if let u = uid, u == UInt32.max { throw ValidationError("--uid \(u) is not a valid uid") }
        if let g = gid, g == UInt32.max { throw ValidationError("--gid \(g) is not a valid gid") }
        if let m = jailMemoryMargin, !(0...65536).contains(m) { throw ValidationError("--jail-memory-margin must be 0 to 65536 MiB, not \(m)") }
        if let p = jailPids, !(16...4_194_304).contains(p) { throw ValidationError("--jail-pids must be 16 to 4194304, not \(p)") }
        if let c = jailCpus, !(c.isFinite && c >= 0.01 && c <= 4096) { throw ValidationError("--jail-cpus must be 0.01 to 4096, not \(c)") }
    }

    /// Always a new net namespace: the TAP, the only network the VMM uses,
    /// is open before the jail is entered and keeps working there.
    func config(memoryMiB: Int, vcpus: Int, bind: [String]) -> JailConfig {
        JailConfig(
            uid: uid, gid: gid,
            memoryMax: UInt64(memoryMiB + (jailMemoryMargin ?? Self.defaultMemoryMarginMiB)) << 20,
            pidsMax: jailPids ?? JailConfig.pidsMax(vcpus: vcpus),
            cpuMax: jailCpus.map { CPUMax(quota: max(1000, Int($0 * 100_000))) },
            keepNet: false, bindDirectories: bind)
    }
}

/// What a jailed command's process is after `JailedRun.start`: the VMM,
/// inside the jail's pid namespace and cgroup (not yet confined: it opens
/// what it needs, then calls `confine`), with its socket directory.
struct JailedRun {
    let context: JailContext
    let sockets: SocketDirectory

    /// Forks the supervised VMM (see `Jail.spawnSupervised`). In the
    /// supervisor this never returns: it waits for the VMM, cleans up and
    /// exits with the VMM's status, or `failureStatus` with one line when
    /// the jail's memory limit killed it. Call it right after
    /// `Seccomp.prepareProcess` and before `Seccomp.enable` (whose filter
    /// compiler is a thread, and the fork must come first), before anything
    /// else is opened.
    static func start(_ options: JailOptions, memoryMiB: Int, vcpus: Int,
                      failureStatus: Int32, fail: (String) -> any Error) throws -> JailedRun {
        let sockets: SocketDirectory
        let role: Role
        do {
            try Jail.requireRoot()
            sockets = try SocketDirectory.create()
        } catch {
            throw fail("\(error)")
        }
        do {
            role = try Jail.spawnSupervised(options.config(memoryMiB: memoryMiB, vcpus: vcpus, bind: [sockets.path]))
        } catch {
            try? sockets.remove()
            throw fail("\(error)")
        }
        switch role {
        case let .child(context):
            return JailedRun(context: context, sockets: sockets)
        case let .supervisor(outcome):
            try? sockets.remove()
            if let cleanup = outcome.cleanupError { printStderr("swiftlet: warning: jail clean-up: \(cleanup)") }
            if let report = outcome.report {
                printStderr("swiftlet: error: \(report.hasPrefix("swiftlet: ") ? String(report.dropFirst(10)) : report)")
                throw ExitCode(failureStatus)
            }
            throw ExitCode(outcome.exitCode)
        }
    }

    /// In the VMM, once every descriptor it needs is open (machine built,
    /// sockets bound) and before any thread starts: hands the socket
    /// directory to the jail's uid, then enters the jail.
    func confine() throws(JailError) {
        try sockets.handOver(to: context.credentials)
        try Jail.enter(context)
    }
}
