import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// The device event loop: one epoll thread that serves all device I/O.
///
/// Queue notifications arrive as ioeventfds that KVM signals without leaving
/// the kernel, so the common path costs the vCPU thread no exit to userspace.
/// Handlers run on this thread only, one at a time.
///
/// `@unchecked Sendable`: `handlers` and `thread` are set up by the thread that
/// builds the machine (before `start`) and torn down by it (after `stop`).
final class EventLoop: @unchecked Sendable {
    private let epoll: Epoll
    private let stopEvent: EventFD
    private var handlers: [@Sendable () -> Void] = []
    private var thread: pthread_t?
    private static let stopTag = UInt64.max

    init() throws(SystemError) {
        epoll = try Epoll()
        stopEvent = try EventFD()
        try epoll.add(stopEvent.fd, tag: Self.stopTag)
    }

    deinit { stop() }

    /// Calls `handler` on the loop thread whenever `fd` is readable. Register
    /// everything before `start`. The handler must drain the fd.
    func add(_ fd: Int32, handler: @escaping @Sendable () -> Void) throws(SystemError) {
        try epoll.add(fd, tag: UInt64(handlers.count))
        handlers.append(handler)
    }

    func start() throws(SystemError) {
        let handlers = self.handlers
        let epoll = self.epoll
        thread = try spawnThread(name: "devices") {
            var events = [UInt32](repeating: 0, count: 32)
            var tags = [UInt64](repeating: 0, count: 32)
            while let n = epoll.wait(events: &events, tags: &tags, timeoutMillis: -1) {
                for tag in tags[0..<n] {
                    if tag == Self.stopTag { return }
                    if let h = handlers[safe: Int(truncatingIfNeeded: tag)] { h() }
                }
            }
        }
    }

    /// Stops the loop and joins its thread. Safe to call twice.
    func stop() {
        guard let t = thread else { return }
        stopEvent.signal()
        pthread_join(t, nil)
        thread = nil
    }
}

extension Array {
    subscript(safe index: Int) -> Element? { indices.contains(index) ? self[index] : nil }
}
