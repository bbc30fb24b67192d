import CSwiftlet
import Glibc
import SwiftletSys
import SwiftletVMM

/// One sandboxed command: a fresh microVM booted from a base image with an
/// ephemeral root drive, the command run by the guest agent, nothing kept.
public struct SandboxConfig: Sendable {
    public var kernelPath: String
    /// The base root image: attached ephemeral, never modified.
    public var rootfsPath: String
    public var job: AgentJob
    public var memoryMiB = 128
    public var vcpuCount = 1
    /// The command's time limit, from its start.
    public var timeoutSeconds: Double?
    /// How long the guest may take to bring its agent up.
    public var bootTimeoutSeconds: Double = 600
    /// Expose the guest's vsock as this hybrid-vsock Unix socket; nil keeps
    /// it private (an abstract socket nobody else can name).
    public var vsockUDS: String?
    /// Who may connect to the vsock sockets (see `VsockConfig.peers`). nil:
    /// this process only for a private socket, else the path's default.
    public var vsockPeers: PeerPolicy?
    /// Runs once the machine is built (every descriptor open, the sockets
    /// bound) and before any of its threads starts: `--jail` enters the
    /// jail here. A failure ends the run before the guest does anything.
    public var beforeGuestRuns: (@Sendable () throws(SandboxError) -> Void)?
    public var guestCID: UInt32 = 3
    /// A virtio-net device (`--net`); with `auto` the command also gets
    /// SWIFTLET_HOST_IP and SWIFTLET_GUEST_IP in its environment.
    public var net: NetConfig?
    /// Further drives after the root drive.
    public var extraDrives: [DriveConfig] = []
    /// Words added to the default kernel command line.
    public var extraKernelArguments: [String] = []
    /// Where decompressed kernels are cached.
    public var kernelCacheDirectory: String?
    /// Where the guest console goes (-1: nowhere; its tail is kept for errors).
    public var consoleFD: Int32 = -1
    public var stdinFD: Int32 = 0
    public var stdoutFD: Int32 = 1
    public var stderrFD: Int32 = 2
    /// Forward SIGINT/SIGTERM/SIGHUP to the job (the CLI); tests leave signals alone.
    public var handleSignals = false
    public var kvmPath = "/dev/kvm"
    /// Restore this snapshot instead of booting. The kernel and drives must
    /// be the snapshot's (checked by content), and memory and vCPUs come
    /// from it; `net` must be nil.
    public var snapshot: Snapshot?
    /// `createSnapshot`: programs the agent runs once before the snapshot, so
    /// that their pages are in every clone's page cache. A job's first exec
    /// otherwise reads its binary from the emulated disk.
    public var warmUpPrograms = ["/bin/sh", "/bin/true"]
    /// A root image without Swiftlet's agent (`--image`): boot this
    /// initramfs (init and the agent), whose init mounts the root drive and
    /// runs the agent with the image as its `/`. nil: the root drive has
    /// the agent and boots directly.
    public var agentInitramfs: String?
    /// Name servers for an image's /etc/resolv.conf, with `net`.
    public var nameservers: [String] = []

    /// The root drive (ephemeral, so the base image is never written), then the others.
    var drives: [DriveConfig] { [DriveConfig(path: rootfsPath, ephemeral: true)] + extraDrives }

    public init(kernelPath: String, rootfsPath: String, job: AgentJob) {
        self.kernelPath = kernelPath
        self.rootfsPath = rootfsPath
        self.job = job
    }

    /// The default kernel command line of a sandbox: the root drive
    /// (ephemeral, so writable), `quiet` because every console byte is a VM
    /// exit, and the agent's port for init.
    public static func kernelCommandLine(extra: [String] = []) -> String {
        BootDefaults.rootDrive(readOnly: false, extra: ["quiet", "SWIFTLET_AGENT=\(AgentProtocol.port)"] + extra)
    }

    /// The command line of an image booted through the agent's initramfs:
    /// init mounts the first drive itself and switches to it.
    public static func imageCommandLine(extra: [String] = []) -> String {
        BootDefaults.initramfs(initPath: "/init", extra: ["quiet", "SWIFTLET_AGENT=\(AgentProtocol.port)", "SWIFTLET_IMAGE=/dev/vda"] + extra)
    }
}

/// What a sandbox run produced.
public struct SandboxResult: Sendable {
    public var outcome: SessionOutcome
    public var timeline: SessionTimeline
    public var machine: RunReport
    /// CLOCK_MONOTONIC ns when the machine had ended and been torn down.
    public var tornDown: UInt64
    /// The machine was restored from a snapshot rather than booted.
    public var restored: Bool
}

public enum Sandbox {
    /// The agent listener's address for a vsock base path.
    public static func agentSocketPath(_ uds: String) -> String { "\(uds)_\(AgentProtocol.port)" }

    /// Boots the machine, runs the job, tears everything down. Throws only
    /// for failures before the guest runs; what happened after is in the result.
    public static func run(_ config: SandboxConfig) throws(SandboxError) -> SandboxResult {
        try config.job.validate()
        let host = try HostEnd(config)
        let uds = host.uds

        let machine: Machine
        do throws(VMMError) {
            if let snapshot = config.snapshot {
                var machineConfig = snapshot.machineConfig(vsockPath: uds)
                machineConfig.payload = .linux(kernelPath: config.kernelPath, initrdPath: nil, cmdline: snapshot.manifest.cmdline)
                machineConfig.drives = config.drives
                apply(config, to: &machineConfig)
                machine = try Machine.restore(machineConfig, from: snapshot)
            } else {
                machine = try Machine.boot(machineConfig(config, uds: uds))
            }
        } catch {
            throw .vmm(error)
        }

        var options = host.sessionOptions(config)
        options.stdinFD = config.stdinFD
        options.stdoutFD = config.stdoutFD
        options.stderrFD = config.stderrFD
        options.timeoutSeconds = config.timeoutSeconds
        var job = config.job
        if let plan = machine.netAddresses {
            job.environment += ["SWIFTLET_HOST_IP=\(plan.hostString)", "SWIFTLET_GUEST_IP=\(plan.guestString)"]
        }
        let session = try AgentSession(job: job, options: options) { outcome in
            switch outcome {
            case .finished: machine.stop("the command finished")
            case .timedOut: machine.stop("the command timed out")
            case let .interrupted(s): machine.stop("signal \(s)")
            case .abandoned, .parked: machine.stop("the session ended")
            case let .failed(e): machine.stop("\(e)")
            }
        }
        try config.beforeGuestRuns?()
        // The hook may have held the machine (`run --start-fd`): the guest's
        // clock resumes from the snapshot's, not from when it was restored.
        do { try machine.rewindClock() } catch { throw .vmm(error) }
        let report = try run(machine, with: session)
        var outcome = session.outcome ?? .abandoned
        // The agent's connection went because the guest reset its device
        // (a job can unbind the vsock driver): say so, not "disconnected".
        if case .failed(.agentLost) = outcome, machine.vsockDriverResets > 0 {
            outcome = .failed(.agentLost("the guest reset the agent's vsock device before the command finished"))
        }
        return SandboxResult(outcome: outcome, timeline: session.timeline, machine: report, tornDown: Clock.monotonicNanos(),
                             restored: config.snapshot != nil)
    }

    /// Boots a machine as `run` would, waits until its agent reports it is
    /// idle, pauses it and writes a snapshot into `directory` (created; it
    /// must not exist, and is removed again if anything fails).
    public static func createSnapshot(_ config: SandboxConfig, directory: String) throws(SandboxError) {
        let host = try HostEnd(config)
        let machineConfig = machineConfig(config, uds: host.uds)
        var complete = false
        let writer: SnapshotWriter
        do {
            writer = try SnapshotWriter(directory: directory, config: machineConfig)
        } catch {
            throw .snapshot(error)
        }
        defer { if !complete { Snapshot.remove(directory: directory) } }
        let machine: Machine
        do {
            machine = try Machine.boot(machineConfig)
        } catch {
            throw .vmm(error)
        }
        var options = host.sessionOptions(config)
        options.park = config.warmUpPrograms
        let session = try AgentSession(job: AgentJob(argv: ["true"]), options: options) { outcome in
            switch outcome {
            case .parked: machine.pause()
            case let .interrupted(s): machine.stop("signal \(s)")
            case let .failed(e): machine.stop("\(e)")
            default: machine.stop("the session ended")
            }
        }
        let report = try run(machine, with: session)
        guard report.exit == .paused else {
            if case let .failed(e) = session.outcome { throw e }
            let console = lastConsoleLine(report).map { " (console: \($0))" } ?? ""
            throw .machine("the guest did not get to an idle agent: \(report.exit)\(console)")
        }
        do {
            try machine.writeSnapshot(writer, guestClockNanos: session.timeline.guestParked)
        } catch {
            throw .snapshot(error)
        }
        complete = true
    }

    /// Runs the machine with the agent session alongside, until both ended.
    static func run(_ machine: Machine, with session: AgentSession) throws(SandboxError) -> RunReport {
        try session.start()
        defer { session.stop() }
        do {
            return try machine.run()
        } catch {
            throw .vmm(error)
        }
    }

    /// The host's end of a sandbox, set up before the machine: the
    /// termination signals blocked into a signalfd (before any thread exists,
    /// so every thread inherits the mask), SIGPIPE ignored (output to a
    /// closed pipe must be an EPIPE the session handles, not death), and the
    /// agent's listener at `<uds>_52`, removed again at the end.
    struct HostEnd: ~Copyable {
        let signals: TerminationSignals?
        let uds: String
        let listener: OwnedFD

        /// What every session on this end starts from: the agent arrives on
        /// the listener within the boot timeout, and signals end the wait.
        func sessionOptions(_ config: SandboxConfig) -> AgentSession.Options {
            var options = AgentSession.Options(listener: listener.raw)
            options.signalFD = signals?.fd ?? -1
            options.connectTimeoutSeconds = config.bootTimeoutSeconds
            return options
        }

        init(_ config: SandboxConfig) throws(SandboxError) {
            var signals: TerminationSignals?
            if config.handleSignals {
                do { signals = try TerminationSignals() } catch { throw .system(error) }
            }
            signal(SIGPIPE, SIG_IGN)
            let uds = config.vsockUDS ?? Sandbox.privateSocketName()
            let agentPath = Sandbox.agentSocketPath(uds)
            do {
                // A socket file a crashed run left behind is replaced; a live one is not.
                listener = try UnixSocket.listenReplacingStale(at: agentPath, backlog: 4)
            } catch {
                switch error {
                case .inUse: throw .usage("vsock socket \(agentPath) is in use by another process")
                case .notASocket: throw .usage("\(agentPath) exists and is not a socket")
                case let .system(e): throw .system(e)
                }
            }
            self.signals = signals
            self.uds = uds
        }

        deinit {
            if !uds.hasPrefix("@") { unlink(Sandbox.agentSocketPath(uds)) }
        }
    }

    /// The machine a cold sandbox boots: the ephemeral root drive, further
    /// drives, the vsock device the agent talks through.
    static func machineConfig(_ config: SandboxConfig, uds: String) -> MachineConfig {
        var m: MachineConfig
        if let initramfs = config.agentInitramfs {
            let dns = config.net == nil || config.nameservers.isEmpty ? [] : ["SWIFTLET_NAMESERVER=" + config.nameservers.joined(separator: ",")]
            m = MachineConfig(kernelPath: config.kernelPath, initrdPath: initramfs,
                              cmdline: SandboxConfig.imageCommandLine(extra: dns + config.extraKernelArguments))
        } else {
            m = MachineConfig(kernelPath: config.kernelPath, cmdline: SandboxConfig.kernelCommandLine(extra: config.extraKernelArguments))
        }
        m.drives = config.drives
        m.vsock = VsockConfig(guestCID: config.guestCID, udsPath: uds)
        m.memoryMiB = config.memoryMiB
        m.vcpuCount = config.vcpuCount
        m.net = config.net
        apply(config, to: &m)
        return m
    }

    /// What every sandbox machine gets, booted or restored.
    static func apply(_ config: SandboxConfig, to m: inout MachineConfig) {
        m.kernelCacheDirectory = config.kernelCacheDirectory
        m.consoleOutputFD = config.consoleFD
        m.captureConsole = true
        m.captureConsoleLimit = 16 << 10
        m.kvmPath = config.kvmPath
        m.memoryLostExitStatus = 125
        // A private socket name is this process's alone: no other process
        // may connect to it, or pose as a host service the guest connects to.
        if let peers = config.vsockPeers ?? (config.vsockUDS == nil ? .thisProcess : nil) { m.vsock?.peers = peers }
    }

    /// An abstract socket name only this process knows.
    static func privateSocketName() -> String {
        var r: UInt64 = 0
        _ = swl_getrandom(&r, 8)
        return "@swiftlet-\(getpid())-\(String(r, radix: 16))"
    }

    /// The last non-empty line the guest console printed, for error messages.
    public static func lastConsoleLine(_ report: RunReport) -> String? {
        let text = String(decoding: report.console, as: UTF8.self)
        return text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).last { !$0.allSatisfy(\.isWhitespace) }.map(String.init)
    }
}
