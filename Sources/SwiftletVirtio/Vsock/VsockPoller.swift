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
    /// The tag of the wake eventfd's events.
    static let wakeTag = UInt64.max
    /// The tag of the deadline timer's events.
    static let timerTag = UInt64.max - 1

    let epoll: Epoll
    let wake: EventFD
    /// Ticks while some connection has a deadline (handshakes).
    let timer: OwnedFD

    /// An epoll set holding the wake eventfd and `fd` (for reading, tagged `tag`).
    init(watching fd: Int32, tag: UInt64) throws(SystemError) {
        let epoll = try Epoll()
        let wake = try EventFD()
        try epoll.add(wake.fd, tag: Self.wakeTag)
        let t = swl_timerfd_new()
        guard t >= 0 else { throw .last("timerfd_create") }
        let timer = OwnedFD(taking: t)
        try epoll.add(timer.raw, tag: Self.timerTag)
        try epoll.add(fd, tag: tag)
        self.epoll = epoll
        self.wake = wake
        self.timer = timer
    }

    func add(_ fd: Int32, events: UInt32, tag: UInt64) throws(SystemError) { try epoll.add(fd, events: events, tag: tag) }
    func modify(_ fd: Int32, events: UInt32, tag: UInt64) throws(SystemError) { try epoll.modify(fd, events: events, tag: tag) }
    func remove(_ fd: Int32) { epoll.remove(fd) }

    /// Makes the epoll fd readable until `drainWake`.
    func signalWake() { wake.signal() }

    /// Makes the epoll fd readable every `nanos` ns (0: never) until changed.
    func tick(every nanos: UInt64) {
        _ = swl_timerfd_every(timer.raw, nanos)
    }

    func drainTimer() {
        var expirations: UInt64 = 0
        // SAFETY: reads the timerfd's 8-byte count into a local UInt64.
        _ = unsafe Glibc.read(timer.raw, &expirations, 8)
    }

    func drainWake() { wake.drain() }

    /// Up to `max` ready events without waiting, as (events, tag) pairs.
    func poll(max: Int) -> [(events: UInt32, tag: UInt64)] {
        var events = [UInt32](repeating: 0, count: max)
        var tags = [UInt64](repeating: 0, count: max)
        guard let n = epoll.wait(events: &events, tags: &tags, timeoutMillis: 0), n > 0 else { return [] }
        return (0..<n).map { (events[$0], tags[$0]) }
    }
}
