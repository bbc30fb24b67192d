import ArgumentParser
import Glibc
import SwiftletSeccomp
import SwiftletSys
import SwiftletVMM

/// `swiftlet boot`: boot a Linux guest with its console on this terminal.
struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a Linux guest, with its serial console on this terminal, until it powers off.",
        discussion: """
        Exit status: 0 when the guest powers off or reboots, 2 when it crashes \
        (panic, triple fault, an instruction KVM cannot emulate), 124 on --timeout, \
        128+N on signal N, 1 when Swiftlet cannot start it. In the console, Ctrl-A x quits.
        """
    )

    @OptionGroup var guest: GuestOptions

    @Option(help: "Boot from this initramfs instead of a root drive.")
    var initrd: String?

    @Option(help: ArgumentHelp("Root filesystem image, attached as /dev/vda and mounted as / (default: the read-only image built by `make rootfs`).", valueName: "path[,ro|,ephemeral]"))
    var rootfs: String?

    @Option(name: .customLong("drive"), help: ArgumentHelp("A further virtio-blk drive (/dev/vdb, ...); repeatable.", valueName: "path[,ro|,ephemeral][,id=NAME]"))
    var drives: [String] = []

    @Option(help: "Replace the whole kernel command line.")
    var cmdline: String?

    @Flag(help: "Print boot timings on stderr: guest-boot-time-us=N from the guest's boot-timer write, and the VMM's own start-up.")
    var bootTimer = false

    @Flag(help: "Print VM exits by reason and the VMM's memory overhead on stderr at the end.")
    var stats = false

    @Option(help: "CPU model shown to the guest: auto, host or pvm-safe.")
    var cpuTemplate: String = BootOptions.defaults.cpuTemplate

    @Option(help: "Stop the guest after this many seconds (exit status 124).")
    var timeout: Double?

    @Option(help: "The KVM device node.")
    var kvmDevice: String = BootOptions.defaults.kvmDevice

    @Option(name: .customLong("vsock-uds"), help: ArgumentHelp("Add a virtio-vsock device (Firecracker's hybrid vsock): host clients connect here and send `CONNECT <port>\\n`; guest connections to CID 2 port P go to <path>_P.", valueName: "path"))
    var vsockUDS: String?

    @Option(name: .customLong("vsock-cid"), help: ArgumentHelp("The guest's vsock CID (default 3; 3 to 4294967294). Needs --vsock-uds.", valueName: "cid"))
    var vsockCID: UInt32?

    @Option(help: ArgumentHelp("Add a virtio-net device on a TAP: `auto` creates one (host 172.30.x.1/30, guest .2 via ip=, removed at exit; needs CAP_NET_ADMIN), `tap=NAME` attaches an existing one.", valueName: "auto|tap=NAME[,mac=M]"))
    var net: String?

    @OptionGroup var jail: JailArguments

    /// What ArgumentParser parsed, as the fast path gives it.
    var options: BootOptions {
        BootOptions(kernel: guest.kernel, initrd: initrd, rootfs: rootfs, drives: drives, cmdline: cmdline, append: guest.append,
                    mem: guest.mem ?? BootOptions.defaults.mem, cpus: guest.cpus ?? BootOptions.defaults.cpus, bootTimer: bootTimer,
                    stats: stats, cpuTemplate: cpuTemplate, timeout: timeout, kvmDevice: kvmDevice, seccomp: guest.seccomp, vsockUDS: vsockUDS, vsockCID: vsockCID, net: net, jail: jail.options)
    }

    func validate() throws { try options.validate() }

    func run() throws { try options.run() }
}

/// `boot`'s options as plain values: what both parsers produce (the fast
/// path in FastParse.swift builds this without ArgumentParser's property
/// wrappers, whose code and metadata would otherwise be paged in at every
/// start), and what `boot` runs from.
struct BootOptions {
    var kernel: String?
    var initrd: String?
    var rootfs: String?
    var drives: [String] = []
    var cmdline: String?
    var append: String?
    var mem = RunOptions.defaultMemoryMiB
    var cpus = RunOptions.defaultVcpus
    var bootTimer = false
    var stats = false
    var cpuTemplate = "auto"
    var timeout: Double?
    var kvmDevice = "/dev/kvm"
    var seccomp = Seccomp.defaultModeName
    var vsockUDS: String?
    var vsockCID: UInt32?
    var net: String?
    var jail = JailOptions()

    /// The defaults, for ArgumentParser's help.
    static let defaults = BootOptions()

    func validate() throws {
        try jail.validate()
        if jail.jail && vsockUDS != nil { throw ValidationError("--vsock-uds cannot be used with --jail yet (the jailed VMM's sockets live in its own directory)") }
        guard CPUTemplateChoice(rawValue: cpuTemplate) != nil else {
            throw ValidationError("invalid --cpu-template '\(cpuTemplate)' (use auto, host or pvm-safe)")
        }
        try OptionLimits.seconds(timeout, "--timeout")
        try OptionLimits.guest(memoryMiB: mem, vcpus: cpus)
        guard cmdline == nil || append == nil else { throw ValidationError("use --cmdline or --append, not both") }
        guard initrd == nil || rootfs == nil else { throw ValidationError("use --initrd or --rootfs, not both") }
        for spec in drives + (rootfs.map { [$0] } ?? []) { _ = try DriveSpec.parse(spec) }
        if let cid = vsockCID {
            guard vsockUDS != nil else { throw ValidationError("--vsock-cid needs --vsock-uds") }
            guard cid > 2 && cid != UInt32.max else {
                throw ValidationError("invalid --vsock-cid \(cid) (0, 1, 2 and 4294967295 are reserved)")
            }
        }
        if let path = vsockUDS, path.isEmpty { throw ValidationError("--vsock-uds needs a path") }
        if let net { _ = try parseNet(net) }
    }

    func run() throws {
        // First, before anything is opened: inherited descriptors closed, and
        // every thread started from here on sandboxed (see SwiftletSeccomp).
        let mode = try seccompMode(seccomp)
        Seccomp.prepareProcess()
        // --jail: from here on this is the VMM, forked under a supervisor
        // (which waits for it and cleans up, and never gets past this line).
        let jailed = jail.jail
            ? try JailedRun.start(jail, memoryMiB: mem, vcpus: cpus,
                                  failureStatus: ExitStatus.usage, fail: { ValidationError($0) })
            : nil
        Seccomp.enable(mode: mode)
        let kernelPath = kernel ?? Paths.defaultKernel
        try requireReadable(kernelPath, what: "kernel", hint: kernel == nil ? " (run `make kernel` first)" : "")
        var attached: [DriveConfig] = []
        let line: String
        let extra = append.map { [$0] } ?? []
        if let initrd {
            try requireReadable(initrd, what: "initrd", hint: "")
            line = cmdline ?? BootDefaults.initramfs(extra: extra)
        } else {
            // The default image is the build's output: never let the guest change it.
            let root = try rootfs.map { try DriveSpec.parse($0) } ?? DriveConfig(path: Paths.defaultRootfs, readOnly: true)
            try requireReadable(root.path, what: "rootfs", hint: rootfs == nil ? " (run `make rootfs` first)" : "")
            attached.append(root)
            line = cmdline ?? BootDefaults.rootDrive(readOnly: root.readOnly, extra: extra)
        }
        for spec in drives { attached.append(try DriveSpec.parse(spec)) }

        var config = MachineConfig(kernelPath: kernelPath, initrdPath: initrd, cmdline: line)
        config.drives = attached
        config.memoryMiB = mem
        config.vcpuCount = cpus
        config.cpuTemplate = CPUTemplateChoice(rawValue: cpuTemplate) ?? .auto
        config.kernelCacheDirectory = Paths.kernelCache
        config.consoleInput = true
        config.timeoutSeconds = timeout
        config.handleTerminationSignals = true
        config.kvmPath = kvmDevice
        if let path = vsockUDS { config.vsock = VsockConfig(guestCID: vsockCID ?? 3, udsPath: path) }

        config.net = try net.map(parseNet)

        let machine = try Machine.boot(config)
        if let tap = machine.netTapName {
            let link = machine.netAddresses.map { " host \($0.hostString) guest \($0.guestString)/30" } ?? ""
            printStderr("swiftlet: net: tap \(tap) mac \(machine.netMAC.map { "\($0)" } ?? "?")\(link)")
        }
        // Opened now: the main thread's filter allows no open once the guest runs.
        let smapsFD = stats ? open("/proc/self/smaps", O_RDONLY | O_CLOEXEC) : -1
        if let jailed {
            do { try jailed.confine() } catch { throw ValidationError("jail: \(error)") }
        }
        let report = try machine.run()

        if bootTimer {
            printStderr("vmm-first-kvm-run-us=\(report.firstRunMicros)")
            printStderr("vmm-first-kvm-run-cpu-us=\(report.firstRunCPUMicros)")
            printStderr("vmm-memslot-wait-us=\(report.memorySlotWaitMicros)")
            printStderr("vmm-first-exit-us=\(report.firstExitMicros)")
            if let t = report.bootTimerMicros { printStderr("guest-boot-time-us=\(t)") }
        }
        if stats {
            let e = report.exits
            var line = "exits: io=\(e.io) mmio=\(e.mmio) kicks=\(e.interrupted) other=\(e.other)"
            for (k, v) in e.emulationFixups.sorted(by: { $0.key.rawValue < $1.key.rawValue }) { line += " fixup-\(k.rawValue)=\(v)" }
            printStderr(line)
            let overhead = machine.hostOverhead(smapsFD: smapsFD)
            printStderr("vmm-overhead-rss-kib=\(overhead.rss / 1024)")
            printStderr("vmm-overhead-anon-kib=\(overhead.anonymous / 1024)")
        }
        Seccomp.reportLog()
        printStderr("swiftlet: \(report.exit)")
        switch report.exit {
        case .poweredOff, .rebooted: throw ExitCode(ExitStatus.clean)
        case let .stopped(why) where why.hasPrefix("timeout"): throw ExitCode(ExitStatus.timeout)
        case let .stopped(why) where why.hasPrefix("signal "):
            throw ExitCode(128 + (Int32(why.dropFirst(7)) ?? 15))
        case .stopped: throw ExitCode(ExitStatus.clean)
        default: throw ExitCode(ExitStatus.guestCrash)
        }
    }
}

/// Parses a `--net` value; a bad one is a usage error of one line.
func parseNet(_ spec: String) throws -> NetConfig {
    do {
        return try NetConfig(parsing: spec)
    } catch {
        throw ValidationError("\(error)")
    }
}

/// Fails with one line when `path` cannot be read.
func requireReadable(_ path: String, what: String, hint: String) throws {
    if access(path, R_OK) != 0 {
        let why = errno == ENOENT ? "not found" : String(cString: strerror(errno))
        throw ValidationError("\(what) \(path): \(why)\(hint)")
    }
}

/// `path[,ro|,ephemeral][,id=NAME]`, as `--drive` and `--rootfs` take it.
/// `ephemeral`: the guest writes to a throwaway overlay; the image never changes.
enum DriveSpec {
    static func parse(_ spec: String) throws -> DriveConfig {
        let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let path = parts.first, !path.isEmpty else { throw ValidationError("drive '\(spec)': no image path") }
        var drive = DriveConfig(path: path)
        for option in parts.dropFirst() {
            if option == "ro" {
                drive.readOnly = true
            } else if option == "ephemeral" {
                drive.ephemeral = true
            } else if option.hasPrefix("id=") {
                let id = String(option.dropFirst(3))
                guard !id.isEmpty, id.utf8.count <= 20 else { throw ValidationError("drive '\(spec)': id must be 1 to 20 bytes") }
                drive.id = id
            } else {
                throw ValidationError("drive '\(spec)': unknown option '\(option)' (use ro, ephemeral or id=NAME)")
            }
        }
        if drive.readOnly && drive.ephemeral {
            throw ValidationError("drive '\(spec)': ro and ephemeral exclude each other (an ephemeral drive is writable, its writes dropped at exit)")
        }
        return drive
    }
}

/// A `--seccomp` value; a bad one is a usage error of one line.
func seccompMode(_ value: String) throws -> SeccompMode {
    guard let mode = SeccompMode(rawValue: value) else {
        throw ValidationError("invalid --seccomp '\(value)' (use strict, log or off)")
    }
    return mode
}
