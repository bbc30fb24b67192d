import ArgumentParser
import CSwiftlet
import Glibc
import SwiftletImage
import SwiftletSandbox
import SwiftletSeccomp
import SwiftletSys
import SwiftletVMM

/// `swiftlet run`: one command in a fresh, throwaway microVM.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one command in a fresh microVM, as if it ran here: its stdin, stdout, stderr and exit status.",
        discussion: """
        The root drive is an ephemeral copy-on-write layer over the base image: the \
        guest's writes vanish when the command ends and the image never changes. \
        Exit status: the command's own, 128+N when a signal N killed it, 127 when it is \
        not found, 124 on --timeout, 125 when Swiftlet itself fails.
        """
    )

    @OptionGroup var guest: GuestOptions

    @Option(help: "Base root filesystem image (never modified). Default: the image built by `make rootfs`.")
    var rootfs: String?

    @Option(help: ArgumentHelp("Run in this image instead: an OCI layout (oci:DIR[:TAG]), a docker save archive, a rootfs tarball, a directory or an ext4 image. It is converted to ext4 once (cached) and gets Swiftlet's agent from an initramfs; its Env, WorkingDir, User, Entrypoint and Cmd are the defaults.", valueName: "REF"))
    var image: String?

    @Option(help: ArgumentHelp("With --image: run as this user of the image (name or uid, optionally :group).", valueName: "USER[:GROUP]"))
    var user: String?

    @Option(name: .customLong("drive"), help: ArgumentHelp("A further virtio-blk drive (/dev/vdb, ...); repeatable.", valueName: "path[,ro|,ephemeral][,id=NAME]"))
    var drives: [String] = []

    @Option(help: "Restore this snapshot (written by `swiftlet snapshot create`) instead of booting.")
    var snapshot: String?

    @Flag(help: "Boot the kernel, even when a cached snapshot could be restored. Without --cold (and without --snapshot, --net and --drive), `run` restores a cached snapshot of the kernel, rootfs, memory and vCPUs asked for, creating it first when there is none.")
    var cold = false

    @Option(help: "Kill the command after this many seconds of running (exit status 124).")
    var timeout: Double?

    @Option(help: "Give up when the guest's agent has not connected after this many seconds.")
    var bootTimeout: Double = RunOptions.defaults.bootTimeout

    @Option(name: .customLong("warm"), help: ArgumentHelp("Run this program of the guest once (no arguments, stdin on /dev/null, killed after 10 s) before the cached snapshot is taken, so its files are in every restored VM's page cache (an interpreter, say); repeatable, part of the cache key.", valueName: "/path"))
    var warm: [String] = []

    @Option(name: .customLong("env"), help: ArgumentHelp("Set an environment variable for the command; repeatable.", valueName: "KEY=VALUE"))
    var environment: [String] = []

    @Option(help: "The command's working directory in the guest.")
    var workdir: String?

    @Option(help: "Also expose the guest's vsock as this hybrid-vsock Unix socket (CONNECT <port> / PATH_<port>).")
    var vsockUds: String?

    @Option(help: ArgumentHelp("Add a virtio-net device on a TAP: `auto` creates one (host 172.30.x.1/30, guest .2, removed at exit; needs CAP_NET_ADMIN; the command gets SWIFTLET_HOST_IP and SWIFTLET_GUEST_IP), `tap=NAME` attaches an existing one.", valueName: "auto|tap=NAME[,mac=M]"))
    var net: String?

    @Option(help: "Write the guest's serial console to this file.")
    var console: String?

    @Flag(help: "Print where the time went on stderr: boot, agent start, the command, teardown.")
    var timings = false

    @Option(help: "The KVM device node.")
    var kvmDevice: String = RunOptions.defaults.kvmDevice

    @Option(help: ArgumentHelp("Restore (or boot) the machine, then wait for one byte on this inherited descriptor before the guest runs; EOF ends the run unstarted (status 125). The job runner's warm pool uses it.", valueName: "fd"))
    var startFd: Int32?

    @Option(help: ArgumentHelp("Write the --timings line to this inherited descriptor at the end, not to stderr (the job runner keeps stderr as the function's log).", valueName: "fd"))
    var reportFd: Int32?

    @OptionGroup var jail: JailArguments

    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.")
    var command: [String] = []

    /// What ArgumentParser parsed, as the fast path gives it.
    var options: RunOptions {
        RunOptions(kernel: guest.kernel, rootfs: rootfs, image: image, user: user, drives: drives, mem: guest.mem, cpus: guest.cpus, snapshot: snapshot, cold: cold,
                   timeout: timeout, bootTimeout: bootTimeout, environment: environment, workdir: workdir, vsockUds: vsockUds,
                   append: guest.append, net: net, console: console, timings: timings, kvmDevice: kvmDevice, startFd: startFd,
                   reportFd: reportFd, seccomp: guest.seccomp, warm: warm, jail: jail.options, command: command)
    }

    func validate() throws { try options.validate() }

    func run() throws { try options.run() }
}

/// `run`'s options as plain values: what both parsers produce (see
/// `BootOptions`), and what `run` runs from.
struct RunOptions {
    static let defaultMemoryMiB = 128
    static let defaultVcpus = 1

    var kernel: String?
    var rootfs: String?
    var image: String?
    var user: String?
    var drives: [String] = []
    var mem: Int?
    var cpus: Int?
    var snapshot: String?
    var cold = false
    var timeout: Double?
    var bootTimeout: Double = 600
    var environment: [String] = []
    var workdir: String?
    var vsockUds: String?
    var append: String?
    var net: String?
    var console: String?
    var timings = false
    var kvmDevice = "/dev/kvm"
    var startFd: Int32?
    var reportFd: Int32?
    var seccomp = Seccomp.defaultModeName
    var warm: [String] = []
    var jail = JailOptions()
    var command: [String] = []

    /// The defaults, for ArgumentParser's help.
    static let defaults = RunOptions()

    func validate() throws {
        guard !command.isEmpty || image != nil else { throw ValidationError("no command given (usage: swiftlet run [options] -- CMD [ARGS...])") }
        if image != nil && rootfs != nil { throw ValidationError("--image and --rootfs exclude each other") }
        try WarmUp.validate(warm)
        if !warm.isEmpty && (cold || snapshot != nil || net != nil || !drives.isEmpty) {
            throw ValidationError("--warm applies to the cached snapshot: not with --cold, --snapshot, --net or --drive")
        }
        if user != nil && image == nil { throw ValidationError("--user needs --image (the user is looked up in the image's /etc/passwd)") }
        try OptionLimits.seconds(timeout, "--timeout")
        try OptionLimits.seconds(bootTimeout, "--boot-timeout")
        try OptionLimits.guest(memoryMiB: mem, vcpus: cpus)
        for e in environment {
            guard let eq = e.firstIndex(of: "="), eq != e.startIndex else { throw ValidationError("--env '\(e)' is not KEY=VALUE") }
        }
        if let w = workdir, !w.hasPrefix("/") { throw ValidationError("--workdir must be an absolute path in the guest") }
        for spec in drives { _ = try DriveSpec.parse(spec) }
        if let net { _ = try parseNet(net) }
        if cold && snapshot != nil { throw ValidationError("--cold and --snapshot exclude each other") }
        if net != nil && snapshot != nil { throw ValidationError("--net cannot be used with --snapshot (a snapshot has no network device)") }
        try jail.validate()
        if jail.jail && vsockUds != nil { throw ValidationError("--vsock-uds cannot be used with --jail (the jailed VMM's sockets live in its own directory)") }
        for (fd, name) in [(startFd, "--start-fd"), (reportFd, "--report-fd")] {
            guard let fd else { continue }
            guard fd > 2, fcntl(fd, F_GETFD) >= 0 else { throw ValidationError("\(name) \(fd) is not an open descriptor above 2") }
        }
    }

    func run() throws {
        // First, before anything is opened: inherited descriptors closed, and
        // every thread started from here on sandboxed (see SwiftletSeccomp).
        let mode = try seccompMode(seccomp)
        // Before prepareProcess closes inherited descriptors: these two are kept.
        let keptFDs = [startFd, reportFd].compactMap { $0 }
        Seccomp.prepareProcess(keeping: keptFDs)
        var restored: Snapshot?
        if let dir = snapshot {
            do { restored = try Snapshot.load(directory: dir) } catch { throw RunFailure(message: "\(error)") }
        }
        // --jail: from here on this is the VMM, forked under a supervisor
        // (which waits for it and cleans up, and never gets past this line).
        let jailed = jail.jail
            ? try JailedRun.start(jail, memoryMiB: mem ?? restored?.manifest.memoryMiB ?? RunOptions.defaultMemoryMiB,
                                  vcpus: cpus ?? restored?.manifest.vcpuCount ?? RunOptions.defaultVcpus,
                                  failureStatus: ExitStatus.runFailure, fail: { RunFailure(message: $0) })
            : nil
        Seccomp.enable(mode: mode)
        let kernelPath = kernel ?? restored?.manifest.kernelPath ?? Paths.defaultKernel
        try requireReadable(kernelPath, what: "kernel", hint: kernel == nil ? " (run `make kernel` first)" : "")
        let prepared = try image.map(Images.prepare)
        let rootfsPath = prepared?.rootfsPath ?? rootfs ?? restored?.manifest.drives.first?.config.path ?? Paths.defaultRootfs
        try requireReadable(rootfsPath, what: "rootfs", hint: rootfs == nil ? " (run `make rootfs` first)" : "")
        if restored == nil && !cold && net == nil && drives.isEmpty {
            var shape = SnapshotCache.Shape(kernel: kernelPath, rootfs: rootfsPath, memoryMiB: mem ?? RunOptions.defaultMemoryMiB,
                                            vcpus: cpus ?? RunOptions.defaultVcpus, append: append, bootTimeout: bootTimeout, seccomp: seccomp)
            if let image, let prepared { shape.image = Images.snapshotImage(image, prepared) }
            shape.warm = warm
            restored = try SnapshotCache.snapshot(for: shape)
        }

        var seed = [UInt8](repeating: 0, count: 64)
        _ = seed.withUnsafeMutableBytes { swl_getrandom($0.baseAddress, $0.count) }
        var job = AgentJob(argv: command, environment: environment, workingDirectory: workdir ?? "",
                           stdinAttached: isatty(0) == 0, seed: seed)
        if let prepared { job = try Images.job(job, image: prepared, user: user) }
        var config = SandboxConfig(kernelPath: kernelPath, rootfsPath: rootfsPath, job: job)
        config.memoryMiB = mem ?? restored?.manifest.memoryMiB ?? RunOptions.defaultMemoryMiB
        config.vcpuCount = cpus ?? restored?.manifest.vcpuCount ?? RunOptions.defaultVcpus
        config.snapshot = restored
        config.timeoutSeconds = timeout
        config.bootTimeoutSeconds = bootTimeout
        config.vsockUDS = vsockUds
        let startWait = StartByteWait(fd: startFd)
        if let jailed {
            config.vsockUDS = jailed.sockets.path + "/vsock"
            config.vsockPeers = .thisProcess
            config.beforeGuestRuns = { () throws(SandboxError) in
                do { try jailed.confine() } catch { throw .machine("jail: \(error)") }
                try startWait.wait()
            }
        } else if startFd != nil {
            config.beforeGuestRuns = { () throws(SandboxError) in try startWait.wait() }
        }
        config.extraDrives = try drives.map(DriveSpec.parse)
        if let restored, drives.isEmpty { config.extraDrives = restored.manifest.drives.dropFirst().map(\.config) }
        config.extraKernelArguments = append.map { [$0] } ?? []
        config.kernelCacheDirectory = Paths.kernelCache
        config.handleSignals = true
        config.kvmPath = kvmDevice
        config.net = try net.map(parseNet)
        if let prepared { try Images.configure(&config, for: prepared) }

        let consoleFile = try openConsoleFile(console)
        config.consoleFD = consoleFile.rawOrNone

        let result: SandboxResult
        do {
            result = try Sandbox.run(config)
        } catch {
            throw RunFailure(message: "\(error)")
        }
        Seccomp.reportLog()
        if let reportFd {
            var bytes = Array((timingLine(result, startWait: startWait) + "\n").utf8)
            _ = bytes.withUnsafeMutableBytes { write(reportFd, $0.baseAddress, $0.count) }
        } else if timings {
            printStderr(timingLine(result, startWait: startWait))
        }

        switch result.outcome {
        case let .finished(status):
            throw ExitCode(status.shellStatus)
        case .timedOut:
            printStderr("swiftlet: the command timed out after \(formatSeconds(timeout ?? 0)) s")
            throw ExitCode(ExitStatus.timeout)
        case let .interrupted(signal):
            throw ExitCode(128 + signal)
        case let .failed(error):
            throw RunFailure(message: "\(error)")
        case .abandoned, .parked:
            let exit = result.machine.exit
            let console = Sandbox.lastConsoleLine(result.machine).map { " (console: \($0))" } ?? ""
            if result.timeline.agentConnected == 0 {
                throw RunFailure(message: "the guest ended before its agent connected: \(exit)\(console)")
            }
            throw RunFailure(message: "the guest ended before the command finished: \(exit)\(console)")
        }
    }

    /// The `--timings` line: where the time went, in milliseconds.
    private func timingLine(_ r: SandboxResult, startWait: StartByteWait) -> String {
        let t = r.timeline
        let start = Clock.processStartNanos
        func ms(_ a: UInt64, _ b: UInt64) -> String {
            guard a > 0, b >= a else { return "-" }
            return formatMillis(b - a)
        }
        var line = "swiftlet-timings: start=\(r.restored ? "snapshot" : "cold")"
        line += " boot-ms=\(ms(start, t.agentConnected))"
        line += " agent-start-ms=\(ms(t.guestAgentStart, t.guestAgentConnected))"
        line += " job-ms=\(ms(t.guestJobStart, t.guestJobEnd))"
        line += " job-host-ms=\(ms(t.agentConnected, t.jobExited))"
        line += " first-output-ms=\(ms(start, t.firstOutput))"
        line += " teardown-ms=\(ms(t.jobExited, r.tornDown))"
        line += " total-ms=\(ms(start, Clock.monotonicNanos()))"
        if let b = r.machine.bootTimerMicros { line += " guest-boot-timer-ms=\(formatMillis(b * 1000))" }
        line += " first-kvm-run-us=\(r.machine.firstRunMicros) memslot-wait-us=\(r.machine.memorySlotWaitMicros)"
        // Exit counts transfer to hardware KVM better than wall times on an emulated guest.
        line += " exits-io=\(r.machine.exits.io) exits-mmio=\(r.machine.exits.mmio)"
        if startWait.fd != nil {
            line += " start-wait-ms=\(formatMillis(startWait.waitedNanos)) handover-ms=\(ms(startWait.openedAt, t.agentConnected))"
        }
        // How it ended, unambiguous where the exit status is not (a job may exit 124 or 125 itself).
        switch r.outcome {
        case let .finished(.exited(code)): line += " outcome=exit:\(code & 0xff)"
        case let .finished(.signaled(signal)): line += " outcome=signal:\(signal)"
        case .timedOut: line += " outcome=timeout"
        case let .interrupted(signal): line += " outcome=interrupted:\(signal)"
        case .failed, .abandoned, .parked: line += " outcome=failed"
        }
        return line
    }
}

/// `--start-fd`: the run holds, machine built, until one byte arrives.
///
/// `@unchecked Sendable`: its two times are written once, by the main thread
/// before the guest runs, and read by it after.
final class StartByteWait: @unchecked Sendable {
    let fd: Int32?
    /// How long it held (written once, on the main thread, before the guest runs).
    private(set) var waitedNanos: UInt64 = 0
    /// When the start byte came (CLOCK_MONOTONIC ns).
    private(set) var openedAt: UInt64 = 0

    init(fd: Int32?) { self.fd = fd }

    func wait() throws(SandboxError) {
        guard let fd else { return }
        let start = Clock.monotonicNanos()
        var byte: UInt8 = 0
        let n = retryingEINTR { read(fd, &byte, 1) }
        close(fd)
        openedAt = Clock.monotonicNanos()
        waitedNanos = openedAt - start
        guard n == 1 else { throw .usage("--start-fd \(fd) closed before the start byte: not started") }
    }
}

/// Swiftlet's own failure in `run`: one line on stderr, exit status 125.
struct RunFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

func formatMillis(_ nanos: UInt64) -> String { Clock.millisecondsText(nanos, digits: 1) }

func formatSeconds(_ s: Double) -> String { AgentSession.formatSeconds(s) }

/// `--console FILE`: the file, created or truncated; nil without the option.
func openConsoleFile(_ path: String?) throws -> OwnedFD? {
    guard let path else { return nil }
    do { return try OwnedFD(opening: path, flags: O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644) } catch {
        throw ValidationError("console \(path): \(String(cString: strerror(error.errno)))")
    }
}
