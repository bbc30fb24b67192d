import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

/// Why a machine could not be built or run. Each case renders as one line for the user.
public enum VMMError: Error, CustomStringConvertible, Sendable {
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case boot(X86BootError)
    case bus(BusError)
    case system(SystemError)
    /// A configuration value is out of range (memory size, vCPU count, command line).
    case invalidConfig(String)
    /// Restoring from a snapshot failed its checks.
    case snapshot(SnapshotError)
    /// A drive image could not be opened (the drive's path, and why).
    case drive(String, BlockError)
    /// The vsock device's socket could not be set up.
    case vsock(VsockError)
    /// The TAP could not be attached or created.
    case net(NetError)

    public var description: String {
        switch self {
        case let .kvm(e): return e.description
        case let .memory(e): return e.description
        case let .boot(e): return e.description
        case let .bus(e): return e.description
        case let .system(e): return e.description
        case let .invalidConfig(why): return why
        case let .snapshot(e): return e.description
        case let .drive(path, e): return "drive \(path): \(e)"
        case let .vsock(e): return e.description
        case let .net(e): return e.description
        }
    }
}
