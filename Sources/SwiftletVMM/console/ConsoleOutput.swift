import Glibc
import SwiftletSys
import Synchronization

/// Where the guest's UART output goes: a host file descriptor, and a
/// capturing buffer (tests, and the sandbox's diagnostics) that keeps at
/// most the last `captureLimit` bytes. Writes are unbuffered so the console is live.
final class ConsoleOutput: Sendable {
    let fd: Int32
    let capture: Mutex<[UInt8]>?
    let captureLimit: Int
    /// When the buffer reaches this size, it is trimmed back to `captureLimit`.
    private let trimAt: Int

    init(fd: Int32, capture: Bool, captureLimit: Int = .max) {
        self.fd = fd
        self.capture = capture ? Mutex([]) : nil
        self.captureLimit = max(1, captureLimit)
        let (twice, overflow) = self.captureLimit.multipliedReportingOverflow(by: 2)
        trimAt = overflow ? .max : twice
    }

    func put(_ byte: UInt8) {
        capture?.withLock {
            $0.append(byte)
            // Trim in batches: the tail is what matters, and trimming every byte would be quadratic.
            if $0.count >= trimAt { $0.removeFirst($0.count - captureLimit) }
        }
        if fd >= 0 {
            var b = byte
            _ = retryingEINTR { Glibc.write(fd, &b, 1) }
        }
    }

    var captured: [UInt8] { capture?.withLock { Array($0.suffix(captureLimit)) } ?? [] }
}
