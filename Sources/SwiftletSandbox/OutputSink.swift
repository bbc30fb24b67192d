import CSwiftlet
import Glibc
import SwiftletSys

/// One of the job's output streams on its way to a host descriptor, written
/// without ever blocking the session thread, so that a reader that stalls
/// (`swiftlet run -- yes | sleep 1000`) holds back the guest, never the
/// signal and deadline path.
///
/// - A pipe, FIFO or terminal is written through an open file description of
///   its own, non-blocking (`/proc/self/fd/N` reopened): setting O_NONBLOCK
///   on the caller's descriptor would change it for every process sharing it
///   (the shell's terminal, say).
/// - A socket is written with MSG_DONTWAIT.
/// - Anything else (a regular file, /dev/null) is written directly: such
///   writes do not wait for a reader.
///
/// What the descriptor does not take at once waits here; once `limit` bytes
/// wait, the session stops reading the agent until they drain.
final class OutputSink {
    enum Kind: Equatable { case nonBlocking, socket, direct }

    /// The descriptor written: the reopened one, or the caller's.
    let fd: Int32
    let kind: Kind
    /// The reopened description, when there is one (the caller's stays the caller's).
    private let reopened: OwnedFD?
    private var pending: [UInt8] = []
    private var sent = 0
    /// False once the reader went away (EPIPE): later output is dropped.
    private(set) var isOpen = true

    /// Bytes that may wait before the session stops reading the agent.
    static let limit = 1 << 20

    /// Set up before any filter is installed (it may open `/proc/self/fd/N`).
    init(fd callerFD: Int32) {
        var st = stat()
        var kind = Kind.direct
        var reopened: OwnedFD?
        if fstat(callerFD, &st) == 0 {
            let type = st.st_mode & S_IFMT
            if type == S_IFSOCK {
                kind = .socket
            } else if type == S_IFIFO || (type == S_IFCHR && isatty(callerFD) == 1) {
                // A FIFO with no reader left refuses the open (ENXIO): its
                // writes then fail with EPIPE at once, directly.
                reopened = try? OwnedFD(opening: "/proc/self/fd/\(callerFD)", flags: O_WRONLY | O_NONBLOCK | O_NOCTTY)
                if reopened.rawOrNone >= 0 { kind = .nonBlocking }
            }
        }
        let own = reopened.rawOrNone
        fd = own >= 0 ? own : callerFD
        self.kind = kind
        self.reopened = reopened
    }

    var hasPending: Bool { isOpen && sent < pending.count }
    /// Whether the session should stop reading the agent until this drains.
    var isFull: Bool { isOpen && pending.count - sent >= Self.limit }

    /// Queues `bytes` and writes what the descriptor takes now. Returns false
    /// when the reader is gone (this time or before).
    func write<C: Collection<UInt8>>(_ bytes: C) -> Bool {
        guard isOpen else { return false }
        if sent == pending.count {
            pending.removeAll(keepingCapacity: pending.capacity <= Self.limit)
            sent = 0
        }
        pending.append(contentsOf: bytes)
        return flush()
    }

    /// Writes what waits, until the descriptor would block. Returns false
    /// when the reader is gone (EPIPE or another write error).
    @discardableResult
    func flush() -> Bool {
        while isOpen && sent < pending.count {
            let n = pending.withUnsafeBytes { buf -> Int in
                let p = buf.baseAddress! + sent
                let count = buf.count - sent
                return retryingEINTR {
                    kind == .socket ? send(fd, p, count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) : Glibc.write(fd, p, count)
                }
            }
            if n > 0 {
                sent += n
                continue
            }
            if n < 0 && errno == EAGAIN { return true }
            isOpen = false
            pending = []
            sent = 0
        }
        return isOpen
    }
}
