/// The hybrid-vsock handshake a host client sends before its stream:
/// `CONNECT <port>\n`, answered `OK <host port>\n` once the guest accepts.
///
/// Parsed as Firecracker does: the word `connect` in any case, whitespace,
/// a decimal port below 2^32, optional trailing whitespace (so `\r\n` works).
public enum VsockConnectLine {
    /// What the bytes received so far amount to.
    public enum Parse: Equatable, Sendable {
        /// No newline yet, and still short enough to become a line.
        case incomplete
        /// A complete, valid line asking for this guest port.
        case port(UInt32)
        /// Not a CONNECT line, or too long: the client is dropped.
        case invalid
    }

    /// Parses `bytes`, everything the client sent so far (the reader never
    /// takes bytes past the first newline).
    public static func parse(_ bytes: [UInt8]) -> Parse {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            return bytes.count < VirtioVsock.maxConnectLine ? .incomplete : .invalid
        }
        guard newline < VirtioVsock.maxConnectLine else { return .invalid }
        let words = bytes[..<newline].split(whereSeparator: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0d })
        guard words.count == 2 else { return .invalid }
        let verb = words[0].map { $0 >= 0x61 && $0 <= 0x7a ? $0 - 0x20 : $0 } // ASCII upper case
        guard verb == Array("CONNECT".utf8), words[1].count <= 10,
              words[1].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let port = UInt32(String(decoding: words[1], as: UTF8.self))
        else { return .invalid }
        return .port(port)
    }

    /// The reply to a client whose connection the guest accepted.
    public static func okLine(hostPort: UInt32) -> [UInt8] { Array("OK \(hostPort)\n".utf8) }
}
