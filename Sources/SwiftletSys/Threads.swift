import CSwiftlet
import Glibc
import SwiftletSys

/// Starts `body` on a new plain pthread named `name` (at most 15 bytes).
///
/// vCPUs must never run on the Swift concurrency pool: a thread blocked in
/// `KVM_RUN` would starve it. The closure is `@Sendable` because a closure
/// formed in main-actor code traps when a foreign thread runs it.
public func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) -> pthread_t {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
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
