import Glibc

/// An exclusive `flock` on a lock file, held while this value lives: the
/// kernel drops it when the descriptor closes or the process dies, so a
/// crash never leaves a stale lock (the file itself stays, as lock files
/// do). The one place Swiftlet's lock files are opened and locked.
public struct FileLock: ~Copyable, Sendable {
    private let owned: OwnedFD

    /// Opens (creating it with `mode`) `path`, not following a link, and
    /// waits for the lock.
    public init(_ path: String, mode: mode_t = 0o644) throws(SystemError) {
        let file = try OwnedFD(opening: path, flags: O_RDWR | O_CREAT | O_NOFOLLOW, mode: mode)
        let fd = file.raw
        _ = try retryingEINTR("flock(\(path))") { flock(fd, LOCK_EX) }
        owned = file
    }

    /// The lock when it is free now; nil when another holder has it.
    public static func ifFree(_ path: String, mode: mode_t = 0o644) throws(SystemError) -> FileLock? {
        let file = try OwnedFD(opening: path, flags: O_RDWR | O_CREAT | O_NOFOLLOW, mode: mode)
        let fd = file.raw
        guard retryingEINTR({ flock(fd, LOCK_EX | LOCK_NB) }) == 0 else {
            let e = errno
            if e == EWOULDBLOCK { return nil }
            throw SystemError("flock(\(path))", errno: e)
        }
        return FileLock(holding: file)
    }

    private init(holding file: consuming OwnedFD) { owned = file }

    /// `body`'s result, run while the lock is held: the critical section,
    /// spelled out (the lock itself lasts to the end of its scope anyway).
    public borrowing func whileHeld<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T { try body() }
}
