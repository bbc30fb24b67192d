import CSwiftlet
import Glibc
import SwiftletSys

/// An owned, non-blocking eventfd: a device's ioeventfd or irqfd, or a
/// wake-up for a thread that polls (machine end, stop requests).
final class EventFD: @unchecked Sendable {
    let fd: Int32

    init() throws(SystemError) {
        fd = swl_eventfd_new()
        guard fd >= 0 else { throw .last("eventfd") }
    }

    deinit { close(fd) }

    func signal() {
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// Reads and clears the counter; false when it was zero.
    @discardableResult
    func drain() -> Bool {
        var value: UInt64 = 0
        return Glibc.read(fd, &value, 8) == 8
    }
}
