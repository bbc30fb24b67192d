import Glibc
import SwiftletSys

/// Every way the jailer fails. Each case prints as one line; a failed system
/// call carries the call (with its path) and errno in a `SystemError`.
public enum JailError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A system call failed: `SystemError` names the call and its errno.
    case system(SystemError)
    /// The jail needs root (namespaces, mounts, cgroups, setresuid).
    case notRoot(euid: UInt32)
    /// No mounted cgroup hierarchy offers `controller` (needed for a limit).
    case noController(String)
    /// cgroup v2: the controllers cannot be enabled for the `swiftlet`
    /// parent, typically because the current cgroup holds processes (the
    /// "no internal processes" rule). Carries the path and errno.
    case controllersUnavailable(path: String, errno: Int32)
    /// A configuration the jail refuses (a relative bind path, `/`, ...).
    case invalidConfig(String)
    /// Every id of the dynamic range is taken.
    case noFreeID(lower: UInt32, upper: UInt32)
    /// After dropping to an unprivileged uid/gid, a call that must fail did
    /// not (`setuid(0)`, `setgid(0)`): the drop is not permanent.
    case privilegesRegained(String)
    /// The process has more than one thread: fork would copy only the
    /// calling one (and a KVM fd would belong to the wrong mm).
    case threaded(count: Int)
    /// The supervisor's child exited before it could be put in the cgroup.
    case childLost(String)

    public var description: String {
        switch self {
        case .system(let e): return e.description
        case .notRoot(let euid): return "the jail needs root (effective uid is \(euid)); run as root or without --jail"
        case .noController(let c): return "no cgroup hierarchy offers the \(c) controller (looked in /proc/self/mountinfo and /proc/self/cgroup)"
        case .controllersUnavailable(let path, let errno):
            return "cannot enable cgroup controllers in \(path): \(String(cString: strerror(errno))) (a cgroup v2 cgroup that holds processes cannot delegate controllers; run from a delegated cgroup)"
        case .invalidConfig(let s): return "invalid jail configuration: \(s)"
        case .noFreeID(let lower, let upper): return "no free uid in the jail's dynamic range \(lower)..<\(upper)"
        case .privilegesRegained(let call): return "\(call) succeeded after the privilege drop: refusing to run"
        case .threaded(let n): return "the jail must fork before any thread exists, but this process has \(n) threads"
        case .childLost(let s): return "the jailed child was lost before it started: \(s)"
        }
    }
}

extension JailError {
    /// The current errno as `.system`, naming `call`.
    static func last(_ call: String) -> JailError { .system(.last(call)) }
}

/// Runs a SwiftletSys call, rethrowing its `SystemError` as `JailError.system`.
@inline(__always)
func sys<T>(_ body: () throws(SystemError) -> T) throws(JailError) -> T {
    do { return try body() } catch { throw .system(error) }
}
