import CSwiftlet
import Glibc
import SwiftletSys

/// A Linux TAP device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, its
/// virtio-net header set to the 12 bytes of virtio 1.x.
///
/// A TAP that `create` made is not persistent: the kernel removes the
/// interface when the last fd closes, so it goes with the process on every
/// path (clean exit, crash, SIGTERM, SIGKILL).
public final class TapDevice: Sendable {
    private let owned: OwnedFD
    /// The TAP's descriptor, valid while `self` lives.
    public var fd: Int32 { owned.raw }
    public let name: String
    /// The TAP took TUNSETOFFLOAD with checksum and TSO: offer the guest offloads.
    public let supportsOffloads: Bool
    /// The host-side addresses `--net auto` gave it.
    public let plan: NetAddressPlan?

    /// Takes `owned`: a failure closes it, and with it the interface `create` made.
    private init(_ owned: consuming OwnedFD, name: String, plan: NetAddressPlan?) throws(NetError) {
        let fd = owned.raw
        guard swl_tap_set_vnet_hdr_size(fd, Int32(VirtioNet.headerSize)) == 0 else { throw .system(.last("ioctl(TUNSETVNETHDRSZ)")) }
        // Probe, then start with none: the guest's features decide (`setOffloads`).
        supportsOffloads = swl_tap_set_offload(fd, SWL_TUN_F_CSUM | SWL_TUN_F_TSO4 | SWL_TUN_F_TSO6) == 0
        _ = swl_tap_set_offload(fd, 0)
        self.owned = owned
        self.name = name
        self.plan = plan
    }

    /// The clone device every TAP is opened through.
    static let tunDevice = "/dev/net/tun"

    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count < 16 && !name.contains("/") && !name.contains(" ") && name != "." && name != ".."
    }

    /// Attaches the existing TAP `name`. Never creates one.
    public static func attach(_ name: String) throws(NetError) -> TapDevice {
        guard isValidName(name) else { throw .invalidTapName(name) }
        // SAFETY: the name is a Swift string passed as a C string for the call only.
        guard unsafe swl_if_index(name) != 0 else { throw .noSuchTap(name) }
        var out = [CChar](repeating: 0, count: 16)
        let fd = unsafe swl_tap_open(name, &out)
        if fd < 0 {
            let err = errno
            switch err {
            case EBUSY, EINVAL: throw .tapBusy(name)
            case EPERM, EACCES:
                if unsafe access(tunDevice, R_OK | W_OK) != 0 { throw .tunNotAccessible }
                throw .notPermitted("attaching TAP '\(name)' (not owned by this user)")
            default: throw .system(SystemError("TUNSETIFF(\(name))", errno: err))
            }
        }
        // The interface could have vanished between the check and TUNSETIFF,
        // which then made a fresh (non-persistent) one: refuse it.
        return try TapDevice(OwnedFD(taking: fd), name: name, plan: nil)
    }

    /// Creates a non-persistent TAP named `swl<pid>n<index>`, gives the host
    /// side the first free /30 of 172.30.0.0/16 and brings it up.
    public static func create(index: Int = 0) throws(NetError) -> TapDevice {
        let name = "swl\(getpid())n\(index)"
        // SAFETY: the name is a Swift string passed as a C string for the call only.
        guard unsafe swl_if_index(name) == 0 else { throw .tapBusy(name) }
        // Address choice and assignment are one step across Swiftlet processes
        // in this network namespace (the addresses it sees are per namespace too).
        let lock = AddressPlanLock.acquire()
        defer { _ = lock }
        let plan = try NetAddressPlan.firstFree()
        var out = [CChar](repeating: 0, count: 16)
        let fd = unsafe swl_tap_open(name, &out)
        if fd < 0 {
            let err = errno
            if err == EPERM || err == EACCES { throw .notPermitted("--net auto (creating a TAP device)") }
            throw .system(SystemError("TUNSETIFF(\(name))", errno: err))
        }
        // From here the fd owns the interface: closing it (TapDevice.deinit
        // or the throw paths below) removes it again.
        let tap = try TapDevice(OwnedFD(taking: fd), name: name, plan: plan)
        // SAFETY: the name is passed as a C string for the call only.
        if unsafe swl_if_set_ipv4_up(name, plan.host, NetAddressPlan.mask) != 0 {
            let err = errno
            if err == EPERM || err == EACCES { throw .notPermitted("--net auto (setting the TAP's address)") }
            throw .system(SystemError("ioctl(SIOCSIFADDR \(name))", errno: err))
        }
        return tap
    }

    /// TUNSETOFFLOAD: what the reader (the guest) accepts from the TAP.
    @discardableResult
    public func setOffloads(_ flags: UInt32) -> Bool { swl_tap_set_offload(fd, flags) == 0 }
}

/// A mutex across Swiftlet processes: an flock on a root-only file.
///
/// It used to be a bound abstract socket name, which any local user could
/// bind first and hold, stalling every `--net auto` for the wait below. The
/// file lives in a directory only its owner (root: `--net auto` needs
/// CAP_NET_ADMIN) may write, is opened without following links and checked
/// on the descriptor, and the kernel drops the lock when its holder closes
/// it or dies. The file itself stays, empty, as lock files in /run do.
enum AddressPlanLock {
    static let path = "/run/swiftlet/net-address-plan.lock"

    /// Waits (up to `waitMillis`, then goes on without it) until the lock is
    /// free and holds it. Nil, too, when the file is not safe to trust.
    static func acquire(path: String = path, waitMillis: Int = 10_000) -> OwnedFD? {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        // SAFETY: a path string passed for the call only.
        if !directory.isEmpty { _ = unsafe mkdir(directory, 0o755) }
        var st = stat()
        guard unsafe lstat(directory.isEmpty ? "/" : directory, &st) == 0, st.st_mode & S_IFMT == S_IFDIR,
              st.st_uid == geteuid() || st.st_uid == 0, st.st_mode & 0o022 == 0 else { return nil }
        let fd = unsafe open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return nil }
        let lock = OwnedFD(taking: fd)
        guard unsafe fstat(lock.raw, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_uid == geteuid(), st.st_mode & 0o077 == 0 else {
            return nil
        }
        for _ in 0...max(waitMillis, 0) {
            if retryingEINTR({ flock(lock.raw, LOCK_EX | LOCK_NB) }) == 0 { return lock }
            guard errno == EWOULDBLOCK else { return nil }
            usleep(1000)
        }
        return nil
    }
}
