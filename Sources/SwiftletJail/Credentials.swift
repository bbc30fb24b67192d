import CJail
import Glibc
import SwiftletSys

/// The unprivileged identity the jailed process ends as.
public struct Credentials: Sendable, Equatable {
    public var uid: uid_t
    public var gid: gid_t

    public init(uid: uid_t, gid: gid_t) {
        self.uid = uid
        self.gid = gid
    }

    /// Drops to `uid`/`gid` for good: no supplementary groups, then the real,
    /// effective and saved gid, then the uid (last: setting the gid needs the
    /// privilege the uid change gives up). Moving every uid off 0 clears the
    /// capability sets. Then checks that neither can be regained.
    public func apply() throws(JailError) {
        guard uid != 0, gid != 0 else { throw .invalidConfig("the jail's uid and gid must not be 0") }
        guard setgroups(0, nil) == 0 else { throw .last("setgroups([])") }
        guard swl_jail_setresgid(gid, gid, gid) == 0 else { throw .last("setresgid(\(gid))") }
        guard swl_jail_setresuid(uid, uid, uid) == 0 else { throw .last("setresuid(\(uid))") }
        try verify()
    }

    /// Checks that every uid and gid is the jail's, and that `setuid(0)`,
    /// `setgid(0)` and `setgroups` fail (they would succeed if any uid or
    /// capability were left).
    public func verify() throws(JailError) {
        var r: uid_t = 0, e: uid_t = 0, s: uid_t = 0
        guard swl_jail_getresuid(&r, &e, &s) == 0 else { throw .last("getresuid") }
        guard r == uid, e == uid, s == uid else { throw .privilegesRegained("getresuid (\(r), \(e), \(s))") }
        var rg: gid_t = 0, eg: gid_t = 0, sg: gid_t = 0
        guard swl_jail_getresgid(&rg, &eg, &sg) == 0 else { throw .last("getresgid") }
        guard rg == gid, eg == gid, sg == gid else { throw .privilegesRegained("getresgid (\(rg), \(eg), \(sg))") }
        if setuid(0) == 0 { throw .privilegesRegained("setuid(0)") }
        if setgid(0) == 0 { throw .privilegesRegained("setgid(0)") }
        if setgroups(0, nil) == 0 { throw .privilegesRegained("setgroups([])") }
    }
}

/// A uid (and the gid of the same number) for one jail, taken from a range
/// reserved for Swiftlet and unique among concurrent Swiftlet processes.
///
/// The range 900000..<965536 lies above the ids distributions hand out
/// (system and login users below 60000, systemd's dynamic users
/// 61184..<65520, container subuid ranges from 100000 in steps of 65536 on
/// many hosts, so check /etc/subuid where user namespaces are in use) and
/// below 2^31. Uniqueness: `flock` on `/run/swiftlet/ids/<id>.lock`, held
/// through an fd for the life of the process that allocated it (the
/// supervisor). The files are never removed; a stale one is harmless since
/// the lock goes with the process. An id is skipped if the user or group
/// database names it, or a process runs with it.
///
/// `@unchecked Sendable`: the only mutation, `closeDescriptor`, is for the
/// forked child, which has a single thread.
public final class DynamicID: @unchecked Sendable {
    public static let range: Range<UInt32> = 900_000..<965_536
    public static let lockDirectory = "/run/swiftlet/ids"

    public let id: UInt32
    /// The id's lock (it lasts while its descriptor is open).
    private var lock: FileLock?

    init(id: UInt32, lock: consuming FileLock) {
        self.id = id
        self.lock = Optional(lock)
    }

    /// Closes this process's descriptor. In a forked child this does not
    /// free the id: the lock belongs to the open file, which the parent
    /// still holds.
    public func closeDescriptor() { lock = nil }

    public var credentials: Credentials { Credentials(uid: id, gid: id) }

    /// Takes the first free id of `range`, starting at a random one (so that
    /// concurrent allocators rarely contend for the same lock).
    public static func allocate(range: Range<UInt32> = DynamicID.range) throws(JailError) -> DynamicID {
        guard !range.isEmpty else { throw .invalidConfig("empty dynamic id range") }
        try sys { () throws(SystemError) in try makeDirectories(lockDirectory, mode: 0o700) }
        let inUse = runningIDs(in: range).union(accountIDs(in: range))
        let start = UInt32.random(in: range)
        for i in 0..<UInt32(range.count) {
            let id = range.lowerBound + (start - range.lowerBound + i) % UInt32(range.count)
            if inUse.contains(id) { continue }
            let lock: FileLock?
            do { lock = try FileLock.ifFree(lockDirectory + "/\(id).lock", mode: 0o600) } catch { throw .system(error) }
            if let lock = consume lock { return DynamicID(id: id, lock: lock) }
        }
        throw .noFreeID(lower: range.lowerBound, upper: range.upperBound)
    }

    /// The uids and gids in `range` that /etc/passwd and /etc/group name.
    /// Read from the files, not through getpwuid: the VMM is a static
    /// executable, and a static glibc that loads an NSS module (nss_systemd)
    /// crashes in it. The dynamic range sits far above what directory
    /// services and systemd's DynamicUser hand out (61184-65519).
    static func accountIDs(in range: Range<UInt32>) -> Set<UInt32> {
        var ids = Set<UInt32>()
        for path in ["/etc/passwd", "/etc/group"] {
            guard let text = try? readText(path) else { continue }
            for line in text.split(separator: "\n") {
                // name:password:ID:... in both files.
                let fields = line.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
                if fields.count > 2, let v = UInt32(fields[2]), range.contains(v) { ids.insert(v) }
            }
        }
        return ids
    }

    /// The real, effective, saved and filesystem uids and gids of every
    /// process that fall in `range` (read from /proc/<pid>/status, which,
    /// unlike the owner of /proc/<pid>, shows a non-dumpable process's ids).
    static func runningIDs(in range: Range<UInt32>) -> Set<UInt32> {
        var ids = Set<UInt32>()
        for name in listDirectory("/proc") where pid_t(name) != nil {
            guard let status = try? readText("/proc/\(name)/status") else { continue }
            for line in status.split(separator: "\n") where line.hasPrefix("Uid:") || line.hasPrefix("Gid:") {
                for field in line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst() {
                    if let v = UInt32(field), range.contains(v) { ids.insert(v) }
                }
            }
        }
        return ids
    }
}
