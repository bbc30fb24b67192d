import Glibc
import SwiftletSys

/// Why talking to KVM failed.
public enum KVMError: Error, CustomStringConvertible, Sendable {
    /// The KVM device (`/dev/kvm`, or `--kvm-device`) could not be opened (missing, or permission denied).
    case unavailable(path: String, SystemError)
    /// The kernel's KVM API version is not the stable one (12).
    case apiVersion(Int32)
    /// A capability Swiftlet relies on is missing.
    case missingCapability(String)
    /// An ioctl or other call failed.
    case system(SystemError)
    /// A request exceeded a fixed limit (CPUID entries, MSRs).
    case tooMany(String)

    public var description: String {
        switch self {
        case let .unavailable(path, e):
            switch e.errno {
            case ENOENT: return "\(path) does not exist: KVM is not available on this host"
            case EACCES: return "permission denied on \(path): add this user to its group (usermod -aG kvm USER) or grant it an ACL (setfacl -m u:USER:rw \(path))"
            default: return "cannot open \(path): \(e)"
            }
        case let .apiVersion(v): return "unsupported KVM API version \(v) (need 12)"
        case let .missingCapability(c): return "KVM lacks a required capability: \(c)"
        case let .system(e): return "KVM: \(e)"
        case let .tooMany(what): return "KVM: too many \(what)"
        }
    }
}
