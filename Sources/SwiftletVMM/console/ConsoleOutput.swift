import Glibc
import Synchronization

/// Where the guest's UART output goes: a host file descriptor, or a
/// capturing buffer (tests). Writes are unbuffered so the console is live.
final class ConsoleOutput: Sendable {
    let fd: Int32
    let capture: Mutex<[UInt8]>?

    init(fd: Int32, capture: Bool) {
        self.fd = fd
        self.capture = capture ? Mutex([]) : nil
    }

    func put(_ byte: UInt8) {
        capture?.withLock { $0.append(byte) }
        if fd >= 0 {
            var b = byte
            while Glibc.write(fd, &b, 1) < 0 && errno == EINTR {}
        }
    }

    var captured: [UInt8] { capture?.withLock { $0 } ?? [] }
}
