import Glibc
import SwiftletSys

/// The Unix socket host clients connect to (`uds_path` in Firecracker's
/// hybrid vsock). Owns the listening fd and the socket file: `close` (or
/// deinit) removes the file, if it is still the one this listener created.
final class VsockListener {
    let path: String
    /// The listening socket; nil once closed.
    private var socket: OwnedFD?
    /// Its descriptor; -1 once closed.
    var fd: Int32 { socket?.raw ?? -1 }
    /// The socket file's identity, so `close` never removes a file someone
    /// else put at the path since. Nil for an abstract name (`@...`).
    private let fileID: (dev: UInt64, ino: UInt64)?

    /// Listens at `path`. A stale socket file (nothing accepts on it) is
    /// replaced; a live one, or a path that is not a socket, is an error.
    init(path: String) throws(VsockError) {
        guard !path.isEmpty, path.utf8.count <= UnixSocket.maxPathLength, path != "@" else {
            throw .invalidPath(path)
        }
        socket = try Self.bind(path)
        self.path = path
        fileID = path.hasPrefix("@") ? nil : Self.identity(path)
    }

    deinit { close() }

    /// Stops listening and removes the socket file. Idempotent.
    func close() {
        guard socket != nil else { return }
        socket = nil
        // SAFETY: a path string passed for the call only.
        if let fileID, let now = Self.identity(path), now == fileID { unsafe unlink(path) }
    }

    private static func bind(_ path: String) throws(VsockError) -> OwnedFD {
        do {
            return try UnixSocket.listenReplacingStale(at: path)
        } catch {
            switch error {
            case .inUse: throw .inUse(path)
            case .notASocket: throw .notASocket(path)
            case let .system(e): throw .system(e)
            }
        }
    }

    private static func identity(_ path: String) -> (dev: UInt64, ino: UInt64)? {
        var st = stat()
        // SAFETY: `st` is a local stat buffer that lstat fills.
        guard unsafe lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }
}
