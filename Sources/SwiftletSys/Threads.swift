import CSwiftlet
import Glibc
import SwiftletSys

/// Starts `body` on a new plain pthread named `name` (at most 15 bytes).
///
/// vCPUs must never run on the Swift concurrency pool: a thread blocked in
/// `KVM_RUN` would starve it. The closure is `@Sendable` because a closure
/// formed in main-actor code traps when a foreign thread runs it.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> pthread_t {
    final class Box: Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }
    let box = Unmanaged.passRetained(Box(name, body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
        // Named here too, so the name (the seccomp log's role) is set before the filter.
        _ = swl_pthread_setname(pthread_self(), String(box.name.prefix(15)))
        ThreadSandbox.threadStart?(box.name)
        box.body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<AnyObject>.fromOpaque(box).release()
        throw SystemError("pthread_create(\(name))", errno: rc)
    }
    _ = swl_pthread_setname(thread, String(name.prefix(15)))
    return thread
}

/// Hooks that sandbox Swiftlet's threads (set by `SwiftletSeccomp` for the
/// CLI; nil for library users, whose threads run unfiltered).
public enum ThreadSandbox {
    /// Runs first on every thread `spawnThread` starts, in that thread, with
    /// the thread's name (its role): it installs the role's seccomp filter.
    public nonisolated(unsafe) static var threadStart: (@Sendable (String) -> Void)?
    /// Runs on the main thread once every thread of a machine is started and
    /// before any vCPU enters the guest: the process hardening and the main
    /// thread's own filter.
    public nonisolated(unsafe) static var guestStart: (@Sendable () -> Void)?
}
