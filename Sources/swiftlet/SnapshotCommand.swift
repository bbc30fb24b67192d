import ArgumentParser
import CSwiftlet
import Glibc
import SwiftletImage
import SwiftletSandbox
import SwiftletSeccomp
import SwiftletSys
import SwiftletVMM
import SwiftletX86

/// `swiftlet snapshot`: booted guests saved to disk, for `swiftlet run --snapshot`.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Create snapshots of booted sandbox guests.",
        subcommands: [SnapshotCreate.self, SnapshotCached.self, SnapshotShow.self]
    )
}

/// The guest a snapshot is of, as `snapshot create` and `snapshot cached` take it.
struct SnapshotGuestOptions: ParsableArguments {
    @OptionGroup var guest: GuestOptions

    @Option(help: "Base root filesystem image (attached ephemeral). Default: the image built by `make rootfs`.")
    var rootfs: String?

    @Option(help: ArgumentHelp("Snapshot this image instead, booted through Swiftlet's agent initramfs (see `run --image`).", valueName: "REF"))
    var image: String?

    @Option(help: "Give up when the guest's agent has not reported idle after this many seconds.")
    var bootTimeout: Double = 600

    @Option(name: .customLong("warm"), help: ArgumentHelp("Also run this program of the guest once before the snapshot (see `run --warm`); repeatable.", valueName: "/path"))
    var warm: [String] = []

    var kernel: String? { guest.kernel }
    var mem: Int { guest.mem ?? RunOptions.defaultMemoryMiB }
    var cpus: Int { guest.cpus ?? RunOptions.defaultVcpus }
    var append: String? { guest.append }
    var seccomp: String { guest.seccomp }

    func validate() throws {
        try OptionLimits.seconds(bootTimeout, "--boot-timeout")
        try OptionLimits.guest(memoryMiB: mem, vcpus: cpus)
        if image != nil && rootfs != nil { throw ValidationError("--image and --rootfs exclude each other") }
        try WarmUp.validate(warm)
    }

    /// The kernel and rootfs paths, checked readable, and the image converted.
    func images() throws -> (kernel: String, rootfs: String, image: PreparedImage?) {
        let kernelPath = kernel ?? Paths.defaultKernel
        try requireReadable(kernelPath, what: "kernel", hint: kernel == nil ? " (run `make kernel` first)" : "")
        let prepared = try image.map(Images.prepare)
        let rootfsPath = prepared?.rootfsPath ?? rootfs ?? Paths.defaultRootfs
        try requireReadable(rootfsPath, what: "rootfs", hint: rootfs == nil ? " (run `make rootfs` first)" : "")
        return (kernelPath, rootfsPath, prepared)
    }
}

/// `swiftlet snapshot create --output DIR`: boot once, pause at the idle agent, save.
struct SnapshotCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Boot a sandbox guest until its agent waits for a job, then write a snapshot of it to a new directory.",
        discussion: """
        The directory gets two files: `state` (a checksummed header naming the Swiftlet \
        version, the machine, the kernel's and images' SHA-256, then the vCPU, irqchip, \
        clock and device state) and `memory` (guest RAM, zero pages left as holes). \
        `swiftlet run --snapshot DIR -- CMD` restores it; `swiftlet run` without it \
        keeps one per kernel, rootfs, memory size and vCPU count in the cache.
        """
    )

    @Option(help: "The directory to create (it must not exist).")
    var output: String

    @OptionGroup var guest: SnapshotGuestOptions

    @Option(name: .customLong("drive"), help: ArgumentHelp("A further virtio-blk drive; repeatable. A writable one is the guest's own: restores use it as it is then.", valueName: "path[,ro|,ephemeral][,id=NAME]"))
    var drives: [String] = []

    @Option(help: "Write the guest's serial console to this file.")
    var console: String?

    @Option(help: "The KVM device node.")
    var kvmDevice: String = "/dev/kvm"

    func validate() throws {
        for spec in drives { _ = try DriveSpec.parse(spec) }
    }

    func run() throws {
        // `swiftlet run` creates cache snapshots through this command: die with it.
        if let parent = getenv("SWIFTLET_SNAPSHOT_PARENT").map({ String(cString: $0) }) {
            _ = swl_prctl(1 /* PR_SET_PDEATHSIG */, UInt(SIGTERM), 0, 0, 0)
            if String(getppid()) != parent { throw ExitCode(ExitStatus.runFailure) }
        }
        Seccomp.enable(mode: try seccompMode(guest.seccomp))
        let (kernelPath, rootfsPath, image) = try guest.images()
        var config = SandboxConfig(kernelPath: kernelPath, rootfsPath: rootfsPath, job: AgentJob(argv: ["true"]))
        if let image { try Images.configure(&config, for: image) }
        config.warmUpPrograms += guest.warm
        config.memoryMiB = guest.mem
        config.vcpuCount = guest.cpus
        config.bootTimeoutSeconds = guest.bootTimeout
        config.extraDrives = try drives.map(DriveSpec.parse)
        config.extraKernelArguments = guest.append.map { [$0] } ?? []
        config.kernelCacheDirectory = Paths.kernelCache
        config.handleSignals = true
        config.kvmPath = kvmDevice
        let consoleFile = try openConsoleFile(console)
        config.consoleFD = consoleFile.rawOrNone
        do {
            try Sandbox.createSnapshot(config, directory: output)
        } catch {
            throw RunFailure(message: "\(error)")
        }
        Seccomp.reportLog()
    }
}

/// `swiftlet snapshot cached`: the snapshot `swiftlet run` restores by default, created if missing.
struct SnapshotCached: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cached",
        abstract: "Print the directory of the cached snapshot `swiftlet run` restores for these options, creating it first when there is none.",
        discussion: "The cache is $SWIFTLET_SNAPSHOT_CACHE, else snapshots/ in Swiftlet's cache directory."
    )

    @OptionGroup var guest: SnapshotGuestOptions

    func run() throws {
        let (kernelPath, rootfsPath, image) = try guest.images()
        _ = try seccompMode(guest.seccomp)
        var shape = SnapshotCache.Shape(kernel: kernelPath, rootfs: rootfsPath, memoryMiB: guest.mem, vcpus: guest.cpus, append: guest.append,
                                        bootTimeout: guest.bootTimeout, seccomp: guest.seccomp)
        if let reference = guest.image, let image { shape.image = Images.snapshotImage(reference, image) }
        shape.warm = guest.warm
        print(try SnapshotCache.snapshot(for: shape).directory)
    }
}

/// `swiftlet snapshot show DIR`: what a snapshot was taken of, after checking it.
struct SnapshotShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Check a snapshot's header and checksum, and print what it was taken of, one `key=value` per line."
    )

    @Argument(help: "The snapshot directory.")
    var directory: String

    func run() throws {
        let s: Snapshot
        do { s = try Snapshot.load(directory: directory) } catch { throw RunFailure(message: "\(error)") }
        let m = s.manifest
        var lines = [
            "swiftlet=\(m.swiftletVersion)", "format=\(Snapshot.formatVersion)",
            "created-unix-ns=\(m.createdNanos)", "guest-clock-ns=\(m.guestClockNanos)",
            "memory-mib=\(m.memoryMiB)", "vcpus=\(m.vcpuCount)", "cpu-template=\(m.cpuTemplate.rawValue)",
            "kernel=\(m.kernelPath)", "kernel-sha256=\(SHA256.hex(m.kernel.sha256))",
        ]
        for (i, d) in m.drives.enumerated() {
            let mode = d.config.readOnly ? "ro" : d.config.ephemeral ? "ephemeral" : "rw"
            lines.append("drive\(i)=\(d.config.path) \(mode) \(d.capacityBytes) bytes" + (d.identity.map { " sha256=\(SHA256.hex($0.sha256))" } ?? ""))
        }
        if let cid = m.vsockCID { lines.append("vsock-cid=\(cid)") }
        lines.append("cmdline=\(m.cmdline)")
        print(lines.joined(separator: "\n"))
    }
}
