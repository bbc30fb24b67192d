import Glibc
import SwiftletSys
import Testing
import SwiftletTestSupport

/// Hybrid vsock with a real guest, through `swiftlet run --vsock-uds`: the
/// host CONNECTs to a guest listener, the guest connects back to a host
/// listener, and the guest pipes one into the other, so the same random
/// bytes cross vsock both ways and come back byte-exact.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct VsockRunTests {
    /// 100 MiB each way by default (`SWIFTLET_VSOCK_TEST_MIB` changes it).
    static var mebibytes: Int { getenv("SWIFTLET_VSOCK_TEST_MIB").flatMap { Int(String(cString: $0)) } ?? 100 }

    @Test("a stale <uds> and <uds>_52 left by a crashed run do not break the next run; a live one, or a file that is not a socket, is one line")
    func staleAgentSocket() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let uds = "/tmp/swiftlet-test-stale-\(getpid()).sock"
        defer { unlink(uds); unlink(uds + "_52") }
        // What a SIGKILLed run leaves: socket files nobody accepts on.
        for path in [uds, uds + "_52"] { _ = try UnixSocket.listen(at: path) } // closed at once, the files stay
        #expect(access(uds + "_52", F_OK) == 0)
        var r = try CLI.run(["run", "--vsock-uds", uds, "--", "echo", "ok"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "ok\n")
        #expect(access(uds, F_OK) != 0 && access(uds + "_52", F_OK) != 0, "removed at the end")

        let live = try UnixSocket.listen(at: uds + "_52")
        r = try CLI.run(["run", "--vsock-uds", uds, "--", "true"])
        #expect(r.status == 125)
        #expect(r.stderrLines == ["swiftlet: error: vsock socket \(uds)_52 is in use by another process"])
        _ = live
        unlink(uds + "_52")
        #expect(shell("touch '\(uds)_52'") == 0)
        r = try CLI.run(["run", "--vsock-uds", uds, "--", "true"])
        #expect(r.status == 125)
        #expect(r.stderrLines == ["swiftlet: error: \(uds)_52 exists and is not a socket"])
    }

    @Test("host to guest CONNECT and guest to host, byte-exact both ways; missing listeners refused cleanly")
    func roundTrip() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let uds = "/tmp/swiftlet-test-vsock-\(getpid()).sock"
        let back = try UnixSocket.listen(at: uds + "_6000")
        defer { unlink(uds + "_6000") }
        let script = "swiftlet-vsock connect 2 6999; echo \"refused=$?\"; swiftlet-vsock listen 5000 | swiftlet-vsock connect 2 6000"
        let run = try CLI.start(["run", "--vsock-uds", uds, "--", "sh", "-c", script])
        defer { kill(run.pid, SIGKILL) }

        // Guest to host with nothing listening: the guest's connect is reset.
        #expect(run.waitForStdout("refused=1\n", seconds: 600), "stderr: \(CLI.readText(run.stderrPath))")
        #expect(CLI.readText(run.stderrPath).contains("swiftlet-vsock"))
        // Host to guest with nothing listening: the socket closes without OK.
        #expect(try connectLine(uds, port: 5999) == nil)

        // Host to guest: retry until the guest's listener is up.
        var conn: OwnedFD?
        for _ in 0..<600 {
            if let c = try connectLine(uds, port: 5000), let fd = c.1 {
                #expect(c.0.hasPrefix("OK "))
                conn = OwnedFD(taking: fd)
                break
            }
            usleep(100_000)
        }
        guard let out = conn else { Issue.record("no OK from the guest listener"); return }

        let size = Self.mebibytes << 20
        var data = [UInt8](repeating: 0, count: size)
        var x: UInt64 = 0x2545_F491_4F6C_DD1D
        data.withUnsafeMutableBytes { b in
            for i in stride(from: 0, to: size, by: 8) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                b.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
            }
        }

        // One poll loop: write to the guest, read what it sends back, compare.
        var inbound: Int32 = -1
        var sent = 0, received = 0
        var mismatch = false
        // Read to EOF, not just to the last byte: closing earlier resets the
        // connection under the guest's sender, which can then exit 1.
        var eof = false
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let start = monotonicSeconds()
        while !eof {
            if monotonicSeconds() - start > 1200 { break }
            var fds = [pollfd(fd: inbound >= 0 ? inbound : back.raw, events: Int16(POLLIN), revents: 0)]
            if sent < size { fds.append(pollfd(fd: out.raw, events: Int16(POLLOUT), revents: 0)) }
            guard poll(&fds, nfds_t(fds.count), 1000) >= 0 || errno == EINTR else { break }
            if fds.count > 1 && fds[1].revents != 0 {
                let n = data.withUnsafeBytes { send(out.raw, $0.baseAddress! + sent, min(size - sent, 1 << 16), Int32(MSG_NOSIGNAL)) }
                if n > 0 { sent += n }
                if sent == size { shutdown(out.raw, Int32(SHUT_WR)) }
            }
            if fds[0].revents != 0 {
                if inbound < 0 {
                    inbound = (try UnixSocket.accept(back.raw))?.release() ?? -1
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { recv(inbound, $0.baseAddress, $0.count, 0) }
                if n == 0 { eof = true; break }
                if n < 0 && errno != EINTR && errno != EAGAIN { break }
                if n > 0 {
                    if received + n > size || !data[received..<received + n].elementsEqual(buffer[0..<n]) { mismatch = true }
                    received += n
                }
            }
        }
        let seconds = monotonicSeconds() - start
        // Half-close, as the guest did: its sender ends on EOF, not on a reset.
        if inbound >= 0 { shutdown(inbound, Int32(SHUT_WR)) }
        defer { if inbound >= 0 { close(inbound) } }
        #expect(sent == size)
        #expect(received == size, "received \(received) of \(size) bytes in \(seconds) s")
        #expect(!mismatch)
        #expect(eof, "the guest closed its side after the last byte")
        let r = try run.wait()
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(access(uds, F_OK) != 0, "the vsock socket file is removed")
        print("vsock round trip: \(Self.mebibytes) MiB each way in \(seconds) s")
    }

    /// Connects to the hybrid socket and sends CONNECT; returns the reply line
    /// and the open descriptor, or nil when Swiftlet closed the socket.
    func connectLine(_ uds: String, port: Int) throws -> (String, Int32?)? {
        guard let s = try? UnixSocket.connect(to: uds) else { return nil }
        let fd = s.release()
        var flags = fcntl(fd, F_GETFL)
        flags &= ~O_NONBLOCK
        _ = fcntl(fd, F_SETFL, flags)
        let line = Array("CONNECT \(port)\n".utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var reply: [UInt8] = []
        var c: UInt8 = 0
        while reply.count < 64 {
            let n = recv(fd, &c, 1, 0)
            if n <= 0 { close(fd); return nil }
            if c == UInt8(ascii: "\n") { break }
            reply.append(c)
        }
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        return (String(decoding: reply, as: UTF8.self), fd)
    }
}
