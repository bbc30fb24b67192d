import CSwiftlet
import Glibc

/// An owned epoll set: the one wrapper over epoll in Swiftlet (the device
/// event loop, and the nested sets of the vsock muxer and virtio-net that the
/// loop watches). Each registration carries a 64-bit tag that `wait` hands
/// back. Registrations are level-triggered.
public final class Epoll: Sendable {
    public static let readable = SWL_EPOLLIN
    public static let writable = SWL_EPOLLOUT
    public static let error = SWL_EPOLLERR
    public static let hangup = SWL_EPOLLHUP

    private let handle: OwnedFD
    /// The epoll descriptor, valid while `self` lives; readable while any
    /// registration is ready, so another epoll set can watch it.
    public var fd: Int32 { handle.raw }

    public init() throws(SystemError) {
        let e = swl_epoll_create()
        guard e >= 0 else { throw .last("epoll_create1") }
        handle = OwnedFD(taking: e)
    }

    public func add(_ fd: Int32, events: UInt32 = Epoll.readable, tag: UInt64) throws(SystemError) {
        guard swl_epoll_ctl(handle.raw, SWL_EPOLL_CTL_ADD, fd, events, tag) == 0 else { throw .last("epoll_ctl(ADD)") }
    }

    public func modify(_ fd: Int32, events: UInt32, tag: UInt64) throws(SystemError) {
        guard swl_epoll_ctl(handle.raw, SWL_EPOLL_CTL_MOD, fd, events, tag) == 0 else { throw .last("epoll_ctl(MOD)") }
    }

    /// Removes `fd`; closing it would too, but only once no duplicate remains.
    public func remove(_ fd: Int32) {
        _ = swl_epoll_ctl(handle.raw, SWL_EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeoutMillis` (-1: for ever, 0: not at all) for ready
    /// registrations, filling `events` and `tags` (of equal, non-zero count)
    /// from the front. Returns how many, or nil when epoll_wait failed.
    public func wait(events: inout [UInt32], tags: inout [UInt64], timeoutMillis: Int32) -> Int? {
        let max = Int32(min(events.count, tags.count))
        let n = retryingEINTR { swl_epoll_wait(handle.raw, &events, &tags, max, timeoutMillis) }
        return n < 0 ? nil : Int(n)
    }
}
