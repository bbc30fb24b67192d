import SwiftletKVM
import SwiftletPersist
import SwiftletSys

/// Why a snapshot could not be written, read or restored. Each case is one
/// line for the user; none of them ever lets a guest resume.
public enum SnapshotError: Error, CustomStringConvertible, Sendable {
    /// Not a snapshot, or its bytes do not add up (bad magic, truncated, checksum).
    case corrupt(String)
    /// The saved state's bytes do not decode (what `PersistentState` refused).
    case corruptState(StateError)
    /// Written by another snapshot format or Swiftlet version.
    case incompatible(String)
    /// The kernel, an image or the machine differs from the one snapshotted.
    case mismatch(String)
    /// This host's CPU differs from the snapshot's in a way the guest would notice.
    case hostCPU(String)
    /// Reading or writing the files failed.
    case system(SystemError)
    /// A KVM state ioctl failed.
    case kvm(KVMError)
    /// The machine cannot be snapshotted as configured, or was not paused.
    case unsupported(String)

    public var description: String {
        switch self {
        case let .corrupt(why): return "corrupt snapshot: \(why)"
        case let .corruptState(error): return "corrupt snapshot: \(error)"
        case let .incompatible(why): return "incompatible snapshot: \(why)"
        case let .mismatch(why): return "snapshot mismatch: \(why)"
        case let .hostCPU(why): return "snapshot taken on a different CPU: \(why)"
        case let .system(e): return "snapshot: \(e)"
        case let .kvm(e): return "snapshot: \(e)"
        case let .unsupported(why): return "snapshot: \(why)"
        }
    }
}

/// Swiftlet's version, recorded in every snapshot: a snapshot restores only
/// into the Swiftlet that wrote it.
public enum SwiftletVersion {
    public static let string = "0.8.0"
}
