import Glibc
import Testing

/// `--vsock-uds` / `--vsock-cid`: bad values get one line and exit status 1,
/// before any guest runs.
@Suite("Vsock command-line options", .serialized)
struct VsockCLITests {
    func expectOneLineError(_ args: [String], containing text: String) throws {
        let r = try CLI.run(args, timeout: 60)
        #expect(r.status == 1, "exit status for \(args)")
        #expect(r.stderrLines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.hasPrefix("swiftlet: error: "), "stderr: \(r.stderr)")
        #expect(r.stderr.contains(text), "stderr: \(r.stderr)")
    }

    @Test(arguments: ["0", "1", "2", "4294967295"])
    func reservedCID(_ cid: String) throws {
        try expectOneLineError(["boot", "--vsock-uds", "/tmp/unused.sock", "--vsock-cid", cid], containing: "reserved")
    }

    @Test func cidThatIsNotANumber() throws {
        try expectOneLineError(["boot", "--vsock-uds", "/tmp/unused.sock", "--vsock-cid", "4294967296"], containing: "--vsock-cid")
        try expectOneLineError(["boot", "--vsock-uds", "/tmp/unused.sock", "--vsock-cid", "three"], containing: "--vsock-cid")
    }

    @Test func cidWithoutSocket() throws {
        try expectOneLineError(["boot", "--vsock-cid", "3"], containing: "needs --vsock-uds")
    }

    /// These reach the device set-up, so they need /dev/kvm (the machine is built first).
    @Test(.enabled(if: access("/dev/kvm", R_OK | W_OK) == 0, "needs /dev/kvm"))
    func socketPathProblems() throws {
        let file = try CLI.writeFile(Array("not a socket".utf8))
        defer { unlink(file) }
        let base = ["boot", "--kernel", "/dev/null", "--initrd", "/dev/null"]
        try expectOneLineError(base + ["--vsock-uds", file], containing: "is not a socket")
        try expectOneLineError(base + ["--vsock-uds", "/nonexistent/dir/v.sock"], containing: "bind(/nonexistent/dir/v.sock)")
        try expectOneLineError(base + ["--vsock-uds", "/tmp/" + String(repeating: "v", count: 120)], containing: "too long")

        // Something listening there already.
        let path = file + ".sock"
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener); unlink(path) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            for (i, b) in path.utf8.enumerated() { dst[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        #expect(listen(listener, 1) == 0)
        try expectOneLineError(base + ["--vsock-uds", path], containing: "in use")
    }
}
