import CSwiftlet
import Glibc

/// Unix stream sockets, non-blocking and close-on-exec.
///
/// A path that starts with `@` names a Linux abstract socket: it lives in no
/// filesystem and vanishes with the last descriptor, so a process that dies
/// by SIGKILL leaves nothing behind.
public enum UnixSocket {
    /// The longest path `sockaddr_un` holds.
    public static let maxPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Builds the address for `path` and calls `body` with it and its length.
    public static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(SystemError) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard !bytes.isEmpty, bytes.count <= maxPathLength else { throw SystemError("socket path \(path)", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in bytes.enumerated() { dst[i] = b }
        }
        // Abstract names are exactly their bytes long; paths end at their NUL.
        let length = MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
        }
    }

    /// A new, unconnected socket.
    public static func make() throws(SystemError) -> OwnedFD {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .last("socket(AF_UNIX)") }
        return OwnedFD(taking: fd)
    }

    /// A socket listening at `path`. A filesystem path must not exist yet.
    public static func listen(at path: String, backlog: Int32 = 64) throws(SystemError) -> OwnedFD {
        let s = try make()
        let rc = try withAddress(path) { bind(s.raw, $0, $1) }
        guard rc == 0 else { throw .last("bind(\(path))") }
        guard Glibc.listen(s.raw, backlog) == 0 else {
            let e = SystemError.last("listen(\(path))")
            if !path.hasPrefix("@") { unlink(path) }
            throw e
        }
        return s
    }

    /// Why `listenReplacingStale` could not listen.
    public enum ListenError: Error, Sendable {
        /// A live listener holds the name.
        case inUse
        /// The path is something other than a socket: never removed.
        case notASocket
        case system(SystemError)
    }

    /// Listens at `path`, replacing a socket file a dead process left there
    /// (one that refuses connections). A live listener, or a path that is not
    /// a socket, is an error; an abstract name in use is always live.
    public static func listenReplacingStale(at path: String, backlog: Int32 = 64) throws(ListenError) -> OwnedFD {
        do {
            return try listen(at: path, backlog: backlog)
        } catch {
            guard error.errno == EADDRINUSE else { throw .system(error) }
        }
        if path.hasPrefix("@") { throw .inUse }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw .system(.last("lstat(\(path))")) }
        guard st.st_mode & S_IFMT == S_IFSOCK else { throw .notASocket }
        do {
            _ = try connect(to: path) // closed again at once: someone accepts
            throw ListenError.inUse
        } catch let error as SystemError {
            // EAGAIN: a live listener whose backlog is full.
            guard error.errno == ECONNREFUSED else { throw error.errno == EAGAIN ? .inUse : .system(error) }
        } catch {
            throw .inUse
        }
        guard unlink(path) == 0 || errno == ENOENT else { throw .system(.last("unlink(\(path))")) }
        do {
            return try listen(at: path, backlog: backlog)
        } catch {
            throw error.errno == EADDRINUSE ? .inUse : .system(error)
        }
    }

    /// Connects without blocking. Unix sockets connect at once or fail
    /// (ECONNREFUSED, ENOENT; EAGAIN when the listener's backlog is full).
    public static func connect(to path: String) throws(SystemError) -> OwnedFD {
        let s = try make()
        let rc = try withAddress(path) { addr, len in
            retryingEINTR { Glibc.connect(s.raw, addr, len) }
        }
        guard rc == 0 else { throw .last("connect(\(path))") }
        return s
    }

    /// Accepts one pending connection, non-blocking and close-on-exec; nil when none is pending.
    public static func accept(_ listener: Int32) throws(SystemError) -> OwnedFD? {
        while true {
            let fd = retryingEINTR { swl_accept_nonblocking(listener) }
            if fd >= 0 { return OwnedFD(taking: fd) }
            switch errno {
            case ECONNABORTED: continue // that client gave up; the next may be waiting
            case EAGAIN: return nil
            default: throw .last("accept4")
            }
        }
    }
}

/// Who may be at the other end of a Unix socket, checked with SO_PEERCRED on
/// each accepted (or connected) socket. Abstract names carry no permission
/// check and are listed in the world-readable `/proc/net/unix`, so a socket
/// that only this process's own devices should reach says so here.
public enum PeerPolicy: Sendable, Equatable {
    /// Whoever can reach the socket (a filesystem socket's mode decides).
    case anyone
    /// Processes of this effective user id, and root.
    case user(uid_t)
    /// This one process.
    case process(pid_t)

    public static var thisProcess: PeerPolicy { .process(getpid()) }
    public static var thisUser: PeerPolicy { .user(geteuid()) }

    /// Whether the peer of connected socket `fd` is admitted (false when its
    /// credentials cannot be read).
    public func admits(_ fd: Int32) -> Bool {
        if self == .anyone { return true }
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        guard swl_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return false }
        switch self {
        case .anyone: return true
        case let .user(u): return uid == u || uid == 0
        case let .process(p): return pid == p
        }
    }
}
