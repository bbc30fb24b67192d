import Glibc
import SwiftletSys

/// The one host directory a jailed VMM keeps: where its Unix sockets live
/// (the hybrid vsock listener and `run`'s agent listener), bound into the
/// jail at the same path (`JailConfig.bindDirectories`).
///
/// The supervisor makes it (`/run/swiftlet/sockets/<supervisor pid>-<random>`,
/// 0700 root) before the fork and removes it, with whatever sockets are left,
/// after the child ended; one a supervisor killed by SIGKILL left goes at the
/// next `Jail.sweepStale()`. The child hands it, and the sockets it bound
/// there as root, to the jail's uid just before it enters the jail, so the
/// VMM can still connect to (and remove) them afterwards.
public struct SocketDirectory: Sendable, Equatable {
    public static let base = "/run/swiftlet/sockets"

    public let path: String

    public init(path: String) { self.path = path }

    public static func create(owner: pid_t = getpid()) throws(JailError) -> SocketDirectory {
        SocketDirectory(path: try makeOwnedDirectory(in: base, owner: owner, baseMode: 0o755))
    }

    /// Gives the directory and each entry in it (not following links) to
    /// `credentials`: only the jail's uid (and root) can reach them.
    public func handOver(to credentials: Credentials) throws(JailError) {
        for name in listDirectory(path) {
            let entry = path + "/" + name
            guard lchown(entry, credentials.uid, credentials.gid) == 0 else { throw .last("lchown(\(entry))") }
        }
        guard lchown(path, credentials.uid, credentials.gid) == 0 else { throw .last("lchown(\(path))") }
    }

    /// Removes the directory and what is left in it (sockets the VMM did
    /// not remove, as when it was killed).
    public func remove() throws(JailError) {
        for name in listDirectory(path) { _ = unlink(path + "/" + name) }
        if rmdir(path) != 0 && errno != ENOENT { throw .last("rmdir(\(path))") }
    }

    /// Removes the directories whose supervisor is gone. Returns them.
    @discardableResult
    public static func sweepStale() -> [String] {
        sweepOwnedEntries(in: base) { (try? SocketDirectory(path: $0).remove()) != nil }
    }
}
