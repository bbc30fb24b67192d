import SwiftletSys

/// Why a vsock device could not be set up. Guest misbehaviour is never an
/// error here: it costs the guest its connection (RST) or its packet.
public enum VsockError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The guest CID is 0, 1, 2 or 0xffffffff.
    case invalidCID(UInt32)
    /// The socket path is empty or too long for `sockaddr_un`.
    case invalidPath(String)
    /// Something is already listening at the socket path.
    case inUse(String)
    /// The path exists and is not a socket, so it is not ours to replace.
    case notASocket(String)
    /// Any other failure of the call named in the error.
    case system(SystemError)

    public var description: String {
        switch self {
        case let .invalidCID(cid):
            return "vsock guest CID \(cid) is reserved (use 3 to 4294967294)"
        case let .invalidPath(path):
            return "vsock socket path '\(path)' is empty or too long (at most \(UnixSocket.maxPathLength) bytes)"
        case let .inUse(path):
            return "vsock socket \(path) is in use: something is listening there"
        case let .notASocket(path):
            return "vsock socket path \(path) exists and is not a socket"
        case let .system(e):
            return "vsock: \(e)"
        }
    }
}
