import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// The device event loop: one epoll thread that serves all device I/O.
///
/// Queue notifications arrive as ioeventfds that KVM signals without leaving
/// the kernel, so the common path costs the vCPU thread no exit to userspace.
/// Handlers run on this thread only, one at a time.
final class EventLoop: @unchecked Sendable {
    private let epollFD: Int32
    private let stopEvent: EventFD
    private var handlers: [@Sendable () -> Void] = []
    private var thread: pthread_t?

    init() throws(SystemError) {
        epollFD = swl_epoll_create()
        guard epollFD >= 0 else { throw .last("epoll_create1") }
        do {
            stopEvent = try EventFD()
        } catch {
            close(epollFD)
            throw error
        }
        guard swl_epoll_add(epollFD, stopEvent.fd, UInt64.max) == 0 else {
            let e = SystemError.last("epoll_ctl")
            close(epollFD)
            throw e
        }
    }

    deinit {
        stop()
        close(epollFD)
    }

    /// Calls `handler` on the loop thread whenever `fd` is readable. Register
    /// everything before `start`. The handler must drain the fd.
    func add(_ fd: Int32, handler: @escaping @Sendable () -> Void) throws(SystemError) {
        guard swl_epoll_add(epollFD, fd, UInt64(handlers.count)) == 0 else {
            throw .last("epoll_ctl")
        }
        handlers.append(handler)
    }

    func start() throws(SystemError) {
        let handlers = self.handlers
        let epollFD = self.epollFD
        thread = try spawnThread(name: "devices") {
            var events = [UInt32](repeating: 0, count: 32)
            var data = [UInt64](repeating: 0, count: 32)
            while true {
                let n = swl_epoll_wait(epollFD, &events, &data, 32, -1)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                for i in 0..<Int(n) {
                    if data[i] == UInt64.max { return }
                    if let h = handlers[safe: Int(data[i])] { h() }
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
