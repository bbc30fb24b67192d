import SwiftletSys
import Glibc
import SwiftletVirtio
import SwiftletX86

/// Which CPU model the guest sees.
public enum CPUTemplateChoice: String, Sendable, CaseIterable {
    /// `pvm-safe` on nested PVM hosts, `host` elsewhere.
    case auto
    /// KVM's supported CPUID, with only the topology normalized.
    case host
    /// Hides what nested PVM's instruction emulator cannot run.
    case pvmSafe = "pvm-safe"
}

/// What the machine boots.
public enum BootPayload: Sendable {
    /// A Linux kernel (bzImage or ELF vmlinux), an optional initramfs and the
    /// full kernel command line, booted with the 64-bit boot protocol.
    case linux(kernelPath: String, initrdPath: String?, cmdline: String)
    /// Raw machine code copied to `loadAddress` and entered there, in real
    /// mode or in long mode with the boot GDT and identity paging: the tiny
    /// hand-made guests the tests use to check exits and devices.
    case flat(code: [UInt8], loadAddress: UInt64, longMode: Bool)
}

/// A virtio-blk drive backed by a raw image file.
public struct DriveConfig: Sendable, Equatable {
    public var path: String
    public var readOnly: Bool
    /// The guest may write, but its writes go to a per-run overlay that
    /// vanishes with the VM: the image is only read (and shared with other
    /// runs). Implies writable: `readOnly` and `ephemeral` together are an error.
    public var ephemeral: Bool
    /// The serial the guest reads with GET_ID (at most 20 bytes).
    public var id: String?

    public init(path: String, readOnly: Bool = false, ephemeral: Bool = false, id: String? = nil) {
        self.path = path
        self.readOnly = readOnly
        self.ephemeral = ephemeral
        self.id = id
    }
}

/// A virtio-vsock device with Firecracker's hybrid vsock host side: host
/// clients connect to `udsPath` and send `CONNECT <port>\n`; guest
/// connections to CID 2 port P go to the Unix socket `<udsPath>_<P>`.
public struct VsockConfig: Sendable, Equatable {
    /// The guest's CID: 3 to 4294967294 (0, 1, 2 and 0xffffffff are reserved).
    public var guestCID: UInt32
    /// Where the listener is bound; removed again when the machine goes away.
    public var udsPath: String
    /// Who may connect to the listener, and which listeners the guest's
    /// connections to `<udsPath>_<port>` may reach. By default the same user
    /// (or root) for an abstract name, which has no permission check of its
    /// own, and anyone for a filesystem socket, whose mode decides.
    public var peers: PeerPolicy

    public init(guestCID: UInt32 = 3, udsPath: String, peers: PeerPolicy? = nil) {
        self.guestCID = guestCID
        self.udsPath = udsPath
        self.peers = peers ?? (udsPath.hasPrefix("@") ? .thisUser : .anyone)
    }
}

/// A virtio-net device backed by a Linux TAP device.
// The network types the CLI and the sandbox use, without a direct dependency on SwiftletVirtio.
public typealias MACAddress = SwiftletVirtio.MACAddress
public typealias NetError = SwiftletVirtio.NetError
public typealias NetAddressPlan = SwiftletVirtio.NetAddressPlan

public struct NetConfig: Sendable, Equatable {
    public enum Backend: Sendable, Equatable {
        /// Attach the existing TAP device with this name (never created).
        case tap(String)
        /// Create a TAP (`swl<pid>n0`, not persistent: it goes with the
        /// process), give the host side the first free /30 of 172.30.0.0/16 and
        /// the guest the other address with `ip=` on its command line.
        case auto
    }
    public var backend: Backend
    /// The guest's MAC; nil generates a locally administered one per VM.
    public var mac: MACAddress?

    public init(backend: Backend, mac: MACAddress? = nil) {
        self.backend = backend
        self.mac = mac
    }

    /// Parses `--net` values: `auto[,mac=M]` or `tap=NAME[,mac=M]`.
    public init(parsing spec: String) throws(NetError) {
        var backend: Backend?
        var mac: MACAddress?
        for part in spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            if part == "auto", backend == nil {
                backend = .auto
            } else if part.hasPrefix("tap="), backend == nil {
                let name = String(part.dropFirst(4))
                guard TapDevice.isValidName(name) else { throw .invalidTapName(name) }
                backend = .tap(name)
            } else if part.hasPrefix("mac="), mac == nil {
                mac = try MACAddress(parsing: String(part.dropFirst(4)))
            } else {
                throw .invalidSpec(spec)
            }
        }
        guard let backend else { throw .invalidSpec(spec) }
        self.init(backend: backend, mac: mac)
    }
}

/// Everything needed to build one machine.
public struct MachineConfig: Sendable {
    /// What to boot.
    public var payload: BootPayload
    public var memoryMiB: Int = 128
    public var vcpuCount: Int = 1
    public var cpuTemplate: CPUTemplateChoice = .auto
    /// virtio-blk drives, in order: the first is /dev/vda in the guest.
    public var drives: [DriveConfig] = []
    /// A virtio-vsock device, after the drives.
    public var vsock: VsockConfig?
    /// A virtio-net device, after the vsock device.
    public var net: NetConfig?
    /// Where the UART's output goes (-1: nowhere).
    public var consoleOutputFD: Int32 = 1
    /// Keep a copy of the console output (for tests).
    public var captureConsole = false
    /// Keep only the last this many bytes of the captured console.
    public var captureConsoleLimit = Int.max
    /// Forward the host's stdin to the UART.
    public var consoleInput = false
    /// Where console input comes from (stdin unless a test gives a pipe).
    public var consoleInputFD: Int32 = 0
    /// Where decompressed kernels are cached; nil disables the cache.
    public var kernelCacheDirectory: String?
    /// How often the main thread checks whether every vCPU halted for good.
    public var haltProbeMillis = 20
    /// Stop the machine after this many seconds.
    public var timeoutSeconds: Double?
    /// Stop on SIGINT/SIGTERM (the CLI); tests leave signals alone.
    public var handleTerminationSignals = false
    /// The /dev/kvm path (tests point it elsewhere to check the error).
    public var kvmPath = "/dev/kvm"
    /// The exit status when the process must end at once, with one line on
    /// stderr: a restored guest's memory file was cut short while it ran
    /// (the CLI's error status: 1 for `boot`, 125 for `run`).
    public var memoryLostExitStatus: Int32 = 1

    public init(payload: BootPayload) {
        self.payload = payload
    }

    /// A Linux guest.
    public init(kernelPath: String, initrdPath: String? = nil, cmdline: String) {
        self.payload = .linux(kernelPath: kernelPath, initrdPath: initrdPath, cmdline: cmdline)
    }

    /// Smallest guest memory Swiftlet accepts: below this a Linux guest cannot boot.
    public static let minimumMemoryMiB = 16
    /// The MP table describes at most this many CPUs (APIC ids 0-253; the IOAPIC takes the next).
    public static let maximumVcpus = 254

    /// virtio-mmio devices get GSIs 5-23 (see `Devices.firstVirtioGSI`).
    public static let maximumVirtioDevices = 16

    /// Guest memory in MiB: at least the minimum, at most the host's RAM
    /// (also the CLI's parse-time check, before any size arithmetic).
    public static func validate(memoryMiB: Int) throws(VMMError) {
        guard memoryMiB >= MachineConfig.minimumMemoryMiB else {
            throw .invalidConfig("guest memory of \(memoryMiB) MiB is too small (minimum \(MachineConfig.minimumMemoryMiB) MiB)")
        }
        let hostMiB = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) / (1 << 20)
        guard memoryMiB <= hostMiB else {
            throw .invalidConfig("guest memory of \(memoryMiB) MiB is more than the host's \(hostMiB) MiB")
        }
    }

    /// A vCPU count from 1 to what the MP table (and KVM, when known) allow.
    public static func validate(vcpuCount: Int, maxVcpus: Int = maximumVcpus) throws(VMMError) {
        let limit = min(maxVcpus, MachineConfig.maximumVcpus)
        guard vcpuCount >= 1 && vcpuCount <= limit else {
            throw .invalidConfig("invalid vCPU count \(vcpuCount) (must be 1 to \(limit))")
        }
    }

    /// Checks the values a user can get wrong, with one clear line for each.
    public func validate(maxVcpus: Int) throws(VMMError) {
        try MachineConfig.validate(memoryMiB: memoryMiB)
        guard drives.count + (vsock == nil ? 0 : 1) + (net == nil ? 0 : 1) <= MachineConfig.maximumVirtioDevices else {
            let plus = vsock == nil ? "" : " and a vsock device"
            throw .invalidConfig("too many drives (\(drives.count)\(plus); at most \(MachineConfig.maximumVirtioDevices) virtio devices)")
        }
        if let vsock, !(vsock.guestCID > 2 && vsock.guestCID != UInt32.max) {
            throw .invalidConfig("invalid vsock guest CID \(vsock.guestCID) (0, 1, 2 and 4294967295 are reserved)")
        }
        for drive in drives where drive.readOnly && drive.ephemeral {
            throw .invalidConfig("drive \(drive.path): ro and ephemeral exclude each other (an ephemeral drive is writable, its writes dropped at exit)")
        }
        try MachineConfig.validate(vcpuCount: vcpuCount, maxVcpus: maxVcpus)
    }
}

/// The default kernel command line pieces.
public enum BootDefaults {
    /// Console on the UART; reset through the i8042 (`reboot=k`), so the VMM
    /// sees every reboot, with a warm reset after a panic only (`panic_warm`,
    /// see `ResetFlagWord`); reboot at once on panic (`panic=-1`); one UART only;
    /// skip the i8042's keyboard and mouse probes; trust the TSC (kvmclock
    /// gives its frequency, so no calibration against the PIT is needed).
    public static let base = [
        "console=ttyS0", "reboot=k,panic_warm", "panic=-1", "8250.nr_uarts=1",
        "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
        "tsc=reliable", "no_timer_check", "swiotlb=noforce",
    ]

    /// The command line for booting from the first virtio-blk drive.
    public static func rootDrive(readOnly: Bool, extra: [String] = []) -> String {
        KernelCommandLine.joining(base + ["root=/dev/vda", "rootfstype=ext4", readOnly ? "ro" : "rw"] + extra)
    }

    /// The command line for booting from an initramfs.
    public static func initramfs(initPath: String = "/sbin/init", extra: [String] = []) -> String {
        KernelCommandLine.joining(base + ["rdinit=" + initPath] + extra)
    }
}

/// The BIOS data area's warm-reset flag, which Linux sets before a reset.
enum ResetFlagWord {
    static let address: UInt64 = 0x472
    static let warm: UInt16 = 0x1234
}
