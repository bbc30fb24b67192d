import CSwiftlet
import Glibc

/// SIGINT, SIGTERM and SIGHUP as a readable descriptor: the calling thread
/// blocks them (threads it creates afterwards inherit the mask), so they
/// end a poll loop instead of the process. The one place it is made, for
/// the machine's wait and the sandbox's agent session.
public final class TerminationSignals: Sendable {
    private let owned: OwnedFD

    /// The raw descriptor (non-blocking), valid while `self` lives.
    public var fd: Int32 { owned.raw }

    public init() throws(SystemError) {
        let fd = swl_signalfd_termination()
        guard fd >= 0 else { throw .last("signalfd") }
        owned = OwnedFD(taking: fd)
    }

    /// The number of the signal taken; 0 when none was pending.
    public func take() -> Int32 { Self.take(from: fd) }

    /// `take` for a descriptor borrowed from a `TerminationSignals` that lives elsewhere.
    public static func take(from fd: Int32) -> Int32 { swl_signalfd_read(fd) }
}
