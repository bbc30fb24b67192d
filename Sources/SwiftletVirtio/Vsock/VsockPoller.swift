import CSwiftlet
import Glibc
import SwiftletSys

/// The vsock muxer's own epoll set, plus an eventfd in it that wakes the
/// device loop when queued work needs the rx queue served, and a timerfd
/// that wakes it to enforce deadlines.
///
/// Why its own epoll: the device event loop only knows "readable fd → call
/// handler". The muxer's interest in each socket changes all the time (EPOLLIN
/// off while the guest has no credit, EPOLLOUT on while a write is pending),
/// and nesting one epoll fd inside the loop keeps all of that here.
/// Registrations are level-triggered: every handler drains, or turns its
/// interest off, before returning.
struct VsockPoller: ~Copyable {
    static let readable = SWL_EPOLLIN
    static let writable = SWL_EPOLLOUT
    static let error = SWL_EPOLLERR
    static let hangup = SWL_EPOLLHUP
    /// The tag of the wake eventfd's events.
    static let wakeTag = UInt64.max
    /// The tag of the deadline timer's events.
    static let timerTag = UInt64.max - 1

    let epoll: OwnedFD
    let wake: OwnedFD
    /// Ticks while some connection has a deadline (handshakes).
    let timer: OwnedFD

    /// An epoll set holding the wake eventfd and `fd` (for reading, tagged `tag`).
    init(watching fd: Int32, tag: UInt64) throws(SystemError) {
        let e = swl_epoll_create()
        guard e >= 0 else { throw .last("epoll_create1") }
        let epoll = OwnedFD(taking: e)
        let w = swl_eventfd_new()
        guard w >= 0 else { throw .last("eventfd") }
        let wake = OwnedFD(taking: w)
        guard swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_ADD, wake.raw, SWL_EPOLLIN, Self.wakeTag) == 0 else {
            throw .last("epoll_ctl(ADD eventfd)")
        }
        let t = swl_timerfd_new()
        guard t >= 0 else { throw .last("timerfd_create") }
        let timer = OwnedFD(taking: t)
        guard swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_ADD, timer.raw, SWL_EPOLLIN, Self.timerTag) == 0 else {
            throw .last("epoll_ctl(ADD timerfd)")
        }
        guard swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_ADD, fd, SWL_EPOLLIN, tag) == 0 else {
            throw .last("epoll_ctl(ADD)")
        }
        self.epoll = epoll
        self.wake = wake
        self.timer = timer
    }

    func add(_ fd: Int32, events: UInt32, tag: UInt64) throws(SystemError) {
        guard swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_ADD, fd, events, tag) == 0 else { throw .last("epoll_ctl(ADD)") }
    }

    func modify(_ fd: Int32, events: UInt32, tag: UInt64) throws(SystemError) {
        guard swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_MOD, fd, events, tag) == 0 else { throw .last("epoll_ctl(MOD)") }
    }

    /// Removes `fd`; closing it would too, but only once no duplicate remains.
    func remove(_ fd: Int32) {
        _ = swl_epoll_ctl(epoll.raw, SWL_EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Makes the epoll fd readable until `drainWake`.
    func signalWake() {
        var one: UInt64 = 1
        _ = Glibc.write(wake.raw, &one, 8)
    }

    /// Makes the epoll fd readable every `nanos` ns (0: never) until changed.
    func tick(every nanos: UInt64) {
        _ = swl_timerfd_every(timer.raw, nanos)
    }

    func drainTimer() {
        var expirations: UInt64 = 0
        _ = Glibc.read(timer.raw, &expirations, 8)
    }

    func drainWake() {
        var value: UInt64 = 0
        _ = Glibc.read(wake.raw, &value, 8)
    }

    /// Up to `max` ready events without waiting, as (events, tag) pairs.
    func poll(max: Int) -> [(events: UInt32, tag: UInt64)] {
        var events = [UInt32](repeating: 0, count: max)
        var tags = [UInt64](repeating: 0, count: max)
        var n: Int32
        repeat { n = swl_epoll_wait(epoll.raw, &events, &tags, Int32(max), 0) } while n < 0 && errno == EINTR
        guard n > 0 else { return [] }
        return (0..<Int(n)).map { (events[$0], tags[$0]) }
    }
}
