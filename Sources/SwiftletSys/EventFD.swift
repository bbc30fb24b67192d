import CSwiftlet
import Glibc

/// An owned, non-blocking, close-on-exec eventfd: a device's ioeventfd or
/// irqfd, or the wake-up of a thread that polls (machine end, stop requests,
/// queued vsock work). The one place an eventfd is made.
public final class EventFD: Sendable {
    private let owned: OwnedFD

    /// The raw descriptor, valid while `self` lives.
    public var fd: Int32 { owned.raw }

    public init() throws(SystemError) {
        let fd = swl_eventfd_new()
        guard fd >= 0 else { throw .last("eventfd") }
        owned = OwnedFD(taking: fd)
    }

    /// Adds one to the counter, making the fd readable. Never blocks: a
    /// counter near overflow (EAGAIN) is readable already.
    public func signal() {
        var one: UInt64 = 1
        _ = retryingEINTR { Glibc.write(fd, &one, 8) }
    }

    /// Reads and clears the counter; false when it was zero.
    @discardableResult
    public func drain() -> Bool {
        var value: UInt64 = 0
        return retryingEINTR { Glibc.read(fd, &value, 8) } == 8
    }
}
