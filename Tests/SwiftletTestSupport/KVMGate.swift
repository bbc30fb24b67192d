import Glibc
import Testing

/// Whether KVM tests can run here. Without `/dev/kvm` they skip with a
/// message, except under `SWIFTLET_REQUIRE_KVM=1` (CI), where a missing or
/// unusable `/dev/kvm` fails the run instead.
package enum KVMGate {
    package static var required: Bool { getenv("SWIFTLET_REQUIRE_KVM").map { String(cString: $0) == "1" } ?? false }
    package static var usable: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }
    /// Enable KVM tests when KVM is usable, or when it is required (so they fail loudly).
    package static var enabled: Bool { usable || required }
    package static let skipMessage: Comment = "/dev/kvm is not usable here; set SWIFTLET_REQUIRE_KVM=1 to make this a failure"
}
