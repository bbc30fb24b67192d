import Glibc

/// Holds the vCPU threads before their first `KVM_RUN` until the main thread
/// has sandboxed itself (`ThreadSandbox.guestStart`): no guest instruction
/// runs before every thread of the VMM is under its seccomp filter.
///
/// `@unchecked Sendable`: the rwlock behind the pointer is itself thread-safe.
final class StartGate: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    /// A closed gate (the creating thread holds it).
    init() {
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
        pthread_rwlock_wrlock(lock)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Waits until the gate is open (any thread).
    func pass() {
        pthread_rwlock_rdlock(lock)
        pthread_rwlock_unlock(lock)
    }

    /// Opens the gate: only the thread that created it, once.
    func open() { pthread_rwlock_unlock(lock) }
}
