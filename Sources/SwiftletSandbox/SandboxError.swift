import SwiftletSys
import SwiftletVMM

/// Why a sandbox run failed for reasons of its own, not the command's.
/// `swiftlet run` exits 125 for every one of them.
public enum SandboxError: Error, Sendable, CustomStringConvertible {
    /// Bad user input.
    case usage(String)
    /// The machine could not be built or run.
    case vmm(VMMError)
    /// The snapshot could not be written.
    case snapshot(SnapshotError)
    /// The machine ended, or a step around it failed, for a reason told here.
    case machine(String)
    /// A system call failed.
    case system(SystemError)
    /// The agent broke the protocol.
    case protocolViolation(String)
    /// The guest never brought its agent up.
    case agentMissing(String)
    /// The agent went away before the command finished.
    case agentLost(String)
    /// The agent reported it could not run the job.
    case agentFailed(String)

    public var description: String {
        switch self {
        case let .usage(m), let .machine(m), let .agentMissing(m), let .agentLost(m): return m
        case let .system(e): return "\(e)"
        case let .vmm(e): return e.description
        case let .snapshot(e): return e.description
        case let .protocolViolation(m): return "agent protocol error: \(m)"
        case let .agentFailed(m): return "the guest agent could not run the command: \(m)"
        }
    }
}
