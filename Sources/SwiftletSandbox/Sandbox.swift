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
}

/// What a sandbox run produced.
public struct SandboxResult: Sendable {
    public var outcome: SessionOutcome
    public var timeline: SessionTimeline
    public var machine: RunReport
    /// CLOCK_MONOTONIC ns when the machine had ended and been torn down.
    public var tornDown: UInt64
}

public enum Sandbox {
    /// The agent listener's address for a vsock base path.
    public static func agentSocketPath(_ uds: String) -> String { "\(uds)_\(AgentProtocol.port)" }

    /// Boots the machine, runs the job, tears everything down. Throws only
    /// for failures before the guest runs; what happened after is in the result.
    public static func run(_ config: SandboxConfig) throws(SandboxError) -> SandboxResult {
        try config.job.validate()
        // Block the termination signals before any thread exists, so every thread inherits the mask.
        var signalFD: Int32 = -1
        if config.handleSignals {
            signalFD = swl_signalfd_termination()
            guard signalFD >= 0 else { throw .system(.last("signalfd")) }
        }
        defer { if signalFD >= 0 { close(signalFD) } }
        // Output to a closed pipe must be an EPIPE the session handles, not death.
        signal(SIGPIPE, SIG_IGN)

        let uds = config.vsockUDS ?? privateSocketName()
        let agentPath = agentSocketPath(uds)
        let listener: OwnedFD
        do {
            listener = try UnixSocket.listen(at: agentPath, backlog: 4)
        } catch {
            throw .usage(error.errno == EADDRINUSE ? "vsock socket \(agentPath) already exists" : "\(error)")
        }
        defer { if !agentPath.hasPrefix("@") { unlink(agentPath) } }

        var machineConfig = MachineConfig(kernelPath: config.kernelPath, cmdline: SandboxConfig.kernelCommandLine(extra: config.extraKernelArguments))
        machineConfig.drives = [DriveConfig(path: config.rootfsPath, ephemeral: true)] + config.extraDrives
        machineConfig.vsock = VsockConfig(guestCID: config.guestCID, udsPath: uds)
        machineConfig.memoryMiB = config.memoryMiB
        machineConfig.vcpuCount = config.vcpuCount
        machineConfig.kernelCacheDirectory = config.kernelCacheDirectory
        machineConfig.consoleOutputFD = config.consoleFD
        machineConfig.captureConsole = true
        machineConfig.captureConsoleLimit = 16 << 10
        machineConfig.kvmPath = config.kvmPath
        machineConfig.net = config.net

        let machine: Machine
        do {
            machine = try Machine(config: machineConfig)
        } catch {
            throw .machine("\(error)")
        }

        var options = AgentSession.Options(listener: listener.raw)
        options.stdinFD = config.stdinFD
        options.stdoutFD = config.stdoutFD
        options.stderrFD = config.stderrFD
        options.signalFD = signalFD
        options.timeoutSeconds = config.timeoutSeconds
        options.connectTimeoutSeconds = config.bootTimeoutSeconds
        var job = config.job
        if let plan = machine.netAddresses {
            job.environment += ["SWIFTLET_HOST_IP=\(plan.hostString)", "SWIFTLET_GUEST_IP=\(plan.guestString)"]
        }
        let session = try AgentSession(job: job, options: options) { outcome in
            switch outcome {
            case .finished: machine.stop("the command finished")
            case .timedOut: machine.stop("the command timed out")
            case let .interrupted(s): machine.stop("signal \(s)")
            case .abandoned: machine.stop("the session ended")
            case let .failed(e): machine.stop("\(e)")
            }
        }
        try session.start()
        let report: RunReport
        do {
            report = try machine.run()
        } catch {
            session.stop()
            throw .machine("\(error)")
        }
        session.stop()
        let outcome = session.outcome ?? .abandoned
        return SandboxResult(outcome: outcome, timeline: session.timeline, machine: report, tornDown: Clock.monotonicNanos())
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
