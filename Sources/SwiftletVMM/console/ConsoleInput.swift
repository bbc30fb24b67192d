import CSwiftlet
import Glibc
import SwiftletDevices
import SwiftletSys

/// Feeds the host terminal's input to the guest's UART.
///
/// When stdin is a terminal it is put in raw mode (restored on `stop`), so
/// keys such as Ctrl-C reach the guest; `Ctrl-A x` stops the machine, as in
/// QEMU's `-nographic`. A pipe is forwarded until EOF.
///
/// `@unchecked Sendable`: `savedTermios` and `thread` are set by `start` and
/// cleared by `stop`, both on the thread that owns the machine.
final class ConsoleInput: @unchecked Sendable {
    static let escapeKey: UInt8 = 0x01 // Ctrl-A
    private let serial: Serial8250
    private let inputFD: Int32
    private let stopEvent: EventFD
    private let onEscape: @Sendable () -> Void
    private var savedTermios: termios?
    private var thread: pthread_t?

    init(serial: Serial8250, inputFD: Int32 = 0, onEscape: @escaping @Sendable () -> Void) throws(SystemError) {
        self.serial = serial
        self.inputFD = inputFD
        self.onEscape = onEscape
        stopEvent = try EventFD()
    }

    /// Starts forwarding, if stdin is open at all.
    func start() throws(SystemError) {
        guard fcntl(inputFD, F_GETFD) >= 0 else { return }
        if isatty(inputFD) == 1 {
            var t = termios()
            if tcgetattr(inputFD, &t) == 0 {
                savedTermios = t
                cfmakeraw(&t)
                t.c_oflag |= tcflag_t(OPOST | ONLCR) // keep "\n" → "\r\n" for our own messages
                tcsetattr(inputFD, TCSANOW, &t)
            }
        }
        thread = try spawnThread(name: "console-in") { [self] in pump() }
    }

    /// Stops forwarding and restores the terminal.
    func stop() {
        stopEvent.signal()
        if let t = thread { pthread_join(t, nil); thread = nil }
        if var t = savedTermios { tcsetattr(inputFD, TCSANOW, &t); savedTermios = nil }
    }

    private func pump() {
        var fds = [pollfd(fd: inputFD, events: Int16(POLLIN), revents: 0), pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 256)
        var escapePending = false
        while true {
            let n = retryingEINTR { poll(&fds, 2, -1) }
            if n < 0 || fds[1].revents != 0 { return }
            let got = buffer.withUnsafeMutableBytes { b in retryingEINTR { Glibc.read(inputFD, b.baseAddress, b.count) } }
            if got <= 0 { return } // EOF or error: nothing more to forward.
            var bytes: [UInt8] = []
            for b in buffer[0..<got] {
                if escapePending {
                    escapePending = false
                    if b == UInt8(ascii: "x") { onEscape(); return }
                    if b != ConsoleInput.escapeKey { bytes.append(ConsoleInput.escapeKey) }
                    bytes.append(b)
                } else if b == ConsoleInput.escapeKey && savedTermios != nil {
                    escapePending = true
                } else {
                    bytes.append(b)
                }
            }
            var sent = 0
            while sent < bytes.count {
                sent += serial.enqueueInput(bytes[sent...])
                if sent < bytes.count {
                    // The FIFO is full: wait for the guest to drain it, or for stop.
                    var stopOnly = [pollfd(fd: stopEvent.fd, events: Int16(POLLIN), revents: 0)]
                    if poll(&stopOnly, 1, 2) > 0 { return }
                }
            }
        }
    }
}
