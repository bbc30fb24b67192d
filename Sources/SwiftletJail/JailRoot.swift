import CJail
import Glibc
import SwiftletSys

/// The namespaces the jailed child leaves behind.
public enum Namespaces {
    /// Unshares the mount, IPC and UTS namespaces, and the network one unless
    /// `keepNet` (a TAP device's fd keeps working in a new net namespace, but
    /// opening one does not). The pid namespace is the supervisor's
    /// (`Jail.spawnSupervised`): it takes effect only for a forked child.
    public static func unshare(keepNet: Bool) throws(JailError) {
        var flags = SWL_JAIL_CLONE_NEWNS | SWL_JAIL_CLONE_NEWIPC | SWL_JAIL_CLONE_NEWUTS
        if !keepNet { flags |= SWL_JAIL_CLONE_NEWNET }
        // A new mount namespace unshares the fs struct too, which fails
        // (EINVAL) while another thread shares it. The VMM's setup thread
        // (memslots) is joined by then, but pthread_join can return before
        // the exiting thread drops its fs reference: retry briefly.
        for _ in 0..<1000 {
            if swl_jail_unshare(flags) == 0 { return }
            guard errno == EINVAL else { break }
            sleepMilliseconds(1)
        }
        throw .last("unshare(\(keepNet ? "NEWNS|NEWIPC|NEWUTS" : "NEWNS|NEWIPC|NEWUTS|NEWNET"))")
    }

    /// Makes every mount in this (new) mount namespace private, so that the
    /// jail's mounts never propagate back to the host and vanish with it.
    public static func makeMountsPrivate() throws(JailError) {
        guard mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0 else { throw .last("mount(/, MS_REC|MS_PRIVATE)") }
    }
}

/// The jail's root: a fresh, empty directory on the host
/// (`/run/swiftlet/jail/<supervisor pid>-<random>`) on which the child, in its
/// private mount namespace, mounts a tmpfs holding only the bound
/// directories, then `pivot_root`s into it.
///
/// The mounts exist only in the child's namespace, so nothing is mounted on
/// the host at any time and they vanish with the child. The directory itself
/// is the supervisor's to remove (the child cannot: it is its own root); one
/// left by a supervisor killed with SIGKILL goes at the next `sweepStale()`.
public struct JailRoot: Sendable, Equatable {
    /// Where jail roots are made. Under /run: root-only, and a tmpfs on most
    /// systems, so leftovers do not survive a reboot.
    public static let base = "/run/swiftlet/jail"

    /// The root's host path.
    public let path: String

    public init(path: String) { self.path = path }

    /// Makes a fresh root directory owned by the supervisor `owner`.
    public static func create(owner: pid_t = getpid()) throws(JailError) -> JailRoot {
        JailRoot(path: try makeOwnedDirectory(in: base, owner: owner, baseMode: 0o700))
    }

    /// Removes the (host side, empty) root directory.
    public func remove() throws(JailError) {
        if rmdir(path) != 0 && errno != ENOENT { throw .last("rmdir(\(path))") }
    }

    /// Removes root directories whose supervisor is gone. Returns them.
    @discardableResult
    public static func sweepStale() -> [String] {
        sweepOwnedEntries(in: base) { isDirectory($0) && rmdir($0) == 0 }
    }

    /// Checks and normalizes the directories to bind: absolute, existing,
    /// not `/`, no `.` or `..` components, no duplicates.
    public static func normalize(binds: [String]) throws(JailError) -> [String] {
        var out: [String] = []
        for dir in binds {
            guard dir.hasPrefix("/") else { throw .invalidConfig("bind directory \(dir) is not an absolute path") }
            let parts = dir.split(separator: "/")
            guard !parts.isEmpty else { throw .invalidConfig("cannot bind / into the jail") }
            guard !parts.contains(where: { $0 == "." || $0 == ".." }) else { throw .invalidConfig("bind directory \(dir) has . or .. components") }
            let normal = "/" + parts.joined(separator: "/")
            guard isDirectory(normal) || isDirectoryFollowing(normal) else { throw .invalidConfig("bind directory \(normal) is not a directory") }
            if !out.contains(normal) { out.append(normal) }
        }
        return out
    }

    static func isDirectoryFollowing(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// In the child, after `Namespaces.unshare` and `makeMountsPrivate`:
    /// mounts a tmpfs on the root, bind-mounts each of `binds` at the same
    /// path inside (nosuid, nodev, noexec), pivots into it, detaches the old
    /// root and, unless `writable`, makes the tmpfs read-only (the bound
    /// directories stay writable). Afterwards `/` holds only the paths to the
    /// bound directories.
    public func enter(binds: [String], writable: Bool = false) throws(JailError) {
        let binds = try Self.normalize(binds: binds)
        // Small and inode-capped: the root holds directories only.
        let tmpfsFlags = UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC)
        guard mount("swiftlet-jail", path, "tmpfs", tmpfsFlags, "mode=0755,size=64k,nr_inodes=256") == 0 else {
            throw .last("mount(tmpfs, \(path))")
        }
        for dir in binds {
            let target = path + dir
            try sys { () throws(SystemError) in try makeDirectories(target, mode: 0o755) }
            guard mount(dir, target, nil, UInt(MS_BIND | MS_REC), nil) == 0 else { throw .last("mount(\(dir), bind)") }
            // A bind mount takes its flags only on a remount.
            let flags = UInt(MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            guard mount(nil, target, nil, flags, nil) == 0 else { throw .last("mount(\(dir), remount nosuid,nodev,noexec)") }
        }
        // pivot_root(".", "."): the old root is stacked on the new one and
        // then detached, so no put_old directory is left in the jail.
        guard chdir(path) == 0 else { throw .last("chdir(\(path))") }
        guard swl_jail_pivot_root(".", ".") == 0 else { throw .last("pivot_root(\(path))") }
        guard umount2(".", Int32(MNT_DETACH)) == 0 else { throw .last("umount2(old root, MNT_DETACH)") }
        guard chdir("/") == 0 else { throw .last("chdir(/)") }
        if !writable {
            let flags = UInt(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            guard mount(nil, "/", nil, flags, nil) == 0 else { throw .last("mount(/, remount read-only)") }
        }
    }
}
