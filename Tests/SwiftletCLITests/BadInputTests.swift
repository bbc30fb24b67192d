import Glibc
import Testing
import SwiftletTestSupport

/// Bad input gets exactly one line on stderr (`swiftlet: error: ...`) and
/// exit status 1, with no crash and no hang.
@Suite(.serialized)
struct BadInputTests {
    func expectOneLineError(_ args: [String], containing text: String, asUser: String? = nil) throws {
        let r = try CLI.run(args, asUser: asUser, timeout: 60)
        #expect(r.status == 1, "exit status for \(args)")
        #expect(r.stderrLines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.hasPrefix("swiftlet: error: "), "stderr: \(r.stderr)")
        #expect(r.stderr.contains(text), "stderr: \(r.stderr)")
    }

    /// A synthetic bzImage header: boot flag, "HdrS", a protocol version.
    func fakeBzImage(version: UInt16, xloadflags: UInt16 = 1, size: Int = 8192) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size)
        b[0x1f1] = 1 // setup_sects
        b[0x1fe] = 0x55; b[0x1ff] = 0xaa
        b[0x202] = UInt8(ascii: "H"); b[0x203] = UInt8(ascii: "d"); b[0x204] = UInt8(ascii: "r"); b[0x205] = UInt8(ascii: "S")
        b[0x206] = UInt8(version & 0xff); b[0x207] = UInt8(version >> 8)
        b[0x201] = 0x6e // header end offset from 0x202
        b[0x236] = UInt8(xloadflags & 0xff)
        return b
    }

    @Test("every numeric option is range-checked at parse time on every command: inf, nan, negatives and huge values get one line, never a trap",
          arguments: [
            ["boot", "--timeout", "inf"], ["boot", "--timeout", "nan"], ["boot", "--timeout", "1e300"], ["boot", "--timeout", "-1"],
            ["boot", "--mem", "0"], ["boot", "--mem", "9223372036854775807"], ["boot", "--cpus", "0"], ["boot", "--cpus", "100000"],
            ["boot", "--vsock-uds", "/tmp/swiftlet-test-never", "--vsock-cid", "2"], ["boot", "--vsock-uds", "/tmp/swiftlet-test-never", "--vsock-cid", "99999999999"],
            ["run", "--timeout", "inf", "--", "true"], ["run", "--timeout", "nan", "--", "true"], ["run", "--timeout", "1e300", "--", "true"],
            ["run", "--timeout", "-5", "--", "true"], ["run", "--boot-timeout", "inf", "--", "true"], ["run", "--boot-timeout", "0", "--", "true"],
            ["run", "--mem", "9223372036854775807", "--", "true"], ["run", "--mem", "-1", "--", "true"], ["run", "--cpus", "100000", "--", "true"],
            ["snapshot", "create", "--output", "/tmp/swiftlet-test-never", "--boot-timeout", "nan"],
            ["snapshot", "create", "--output", "/tmp/swiftlet-test-never", "--mem", "1"],
            ["snapshot", "cached", "--cpus", "0"], ["snapshot", "cached", "--boot-timeout", "1e300"],
          ])
    func numericRanges(args: [String]) throws {
        let r = try CLI.run(args, timeout: 60)
        #expect(r.status == (args[0] == "run" ? 125 : 1), "exit status for \(args); stderr: \(r.stderr)")
        #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: "), "stderr: \(r.stderr)")
        #expect(access("/tmp/swiftlet-test-never", F_OK) != 0, "nothing created")
    }

    @Test("--image, --user and --warm misuse: one line, before anything starts (run: 125, snapshot create: 1)", arguments: [
        (["run", "--warm", "python3", "--", "true"], "not an absolute path", Int32(125)),
        (["run", "--warm", "/bin/sh", "--cold", "--", "true"], "--warm applies to the cached snapshot", 125),
        (["run", "--user", "nobody", "--", "true"], "--user needs --image", 125),
        (["run", "--image", "/nonexistent/x.tar", "--rootfs", "/nonexistent/r", "--", "true"], "exclude each other", 125),
        (["run", "--image", "/nonexistent/x.tar", "--", "true"], "/nonexistent/x.tar", 125),
        (["run", "--image", "oci:/nonexistent", "--", "true"], "/nonexistent", 125),
        (["snapshot", "create", "--output", "/nonexistent/s", "--warm", "sh"], "not an absolute path", 1),
        (["image", "prepare", "/nonexistent/x.tar"], "/nonexistent/x.tar", 1),
    ])
    func imageOptions(args: [String], text: String, status: Int32) throws {
        let r = try CLI.run(args, timeout: 60)
        #expect(r.status == status, "exit status for \(args): stderr: \(r.stderr)")
        #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: ") && r.stderr.contains(text), "stderr: \(r.stderr)")
    }

    @Test func missingKernel() throws {
        try expectOneLineError(["boot", "--kernel", "/nonexistent/bzImage"], containing: "not found")
    }

    @Test func notAKernel() throws {
        let path = try CLI.writeFile(Array("this is not a kernel\n".utf8) + [UInt8](repeating: 0x41, count: 4096))
        defer { unlink(path) }
        try expectOneLineError(["boot", "--kernel", path, "--initrd", "/dev/null"], containing: "not a Linux kernel")
    }

    @Test func bootProtocolTooOld() throws {
        let path = try CLI.writeFile(fakeBzImage(version: 0x0204))
        defer { unlink(path) }
        try expectOneLineError(["boot", "--kernel", path, "--initrd", "/dev/null"], containing: "too old")
    }

    @Test(.enabled(if: Images.present, "needs the kernel from `make kernel`"))
    func truncatedBzImage() throws {
        let f = fopen(Images.bzImage, "r")
        var head = [UInt8](repeating: 0, count: 200_000)
        let n = fread(&head, 1, head.count, f)
        fclose(f)
        let path = try CLI.writeFile(Array(head[0..<n]))
        defer { unlink(path) }
        try expectOneLineError(["boot", "--kernel", path, "--initrd", Images.initramfs], containing: "truncated")
    }

    @Test(.enabled(if: Images.present && KVMGate.enabled, "needs the kernel and /dev/kvm"))
    func commandLineTooLong() throws {
        try expectOneLineError(["boot", "--cmdline", String(repeating: "x", count: 5000)], containing: "command line too long")
    }

    @Test(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), arguments: [
        (["--mem", "1"], "too small"),
        (["--mem", "100000000"], "more than the host"),
        (["--cpus", "0"], "invalid vCPU count"),
        (["--cpus", "100000"], "invalid vCPU count"),
    ])
    func machineLimits(args: [String], message: String) throws {
        try expectOneLineError(["boot", "--kernel", Images.bzImage, "--initrd", Images.initramfs] + args, containing: message)
    }

    @Test func unknownFlagAndBadValues() throws {
        try expectOneLineError(["boot", "--no-such-flag"], containing: "no-such-flag")
        try expectOneLineError(["boot", "--mem", "lots"], containing: "lots")
        try expectOneLineError(["boot", "--cpu-template", "fast"], containing: "cpu-template")
    }

    @Test(.enabled(if: Images.present, "needs the images from `make images`"))
    func noKVMDevice() throws {
        try expectOneLineError(["boot", "--kernel", Images.bzImage, "--initrd", Images.initramfs, "--kvm-device", "/nonexistent/kvm"],
                               containing: "does not exist")
    }

    @Test(.enabled(if: getuid() == 0 && access("/dev/kvm", F_OK) == 0, "needs root to drop to nobody, and a /dev/kvm"))
    func kvmPermissionDenied() throws {
        // /dev/kvm here is root-only (mode 0600, or 0660 for the kvm group): nobody cannot open it.
        var st = stat()
        stat("/dev/kvm", &st)
        try #require(st.st_mode & 0o006 == 0, "/dev/kvm is world-accessible here")
        let kernel = try copyReadable(Images.bzImage), initrd = try copyReadable(Images.initramfs)
        defer { unlink(kernel); unlink(initrd) }
        try expectOneLineError(["boot", "--kernel", kernel, "--initrd", initrd], containing: "permission denied on /dev/kvm", asUser: "nobody")
    }

    /// A world-readable copy (or an empty file if the image is missing), for a run as nobody.
    func copyReadable(_ path: String) throws -> String {
        var bytes: [UInt8] = []
        if let f = fopen(path, "r") {
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while true { let n = fread(&buf, 1, buf.count, f); if n <= 0 { break }; bytes += buf[0..<n] }
            fclose(f)
        }
        let copy = try CLI.writeFile(bytes)
        chmod(copy, 0o644)
        return copy
    }
}

/// SIGTERM or SIGINT to `swiftlet boot` stops the VM: status 128+N, one line
/// saying why, and no stray process left behind (the test waits for it).
@Suite(.enabled(if: KVMGate.enabled && Images.present, KVMGate.skipMessage), .serialized)
struct SignalTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func signalStopsTheGuest(signal: Int32) throws {
        let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
        defer { unlink(out); unlink(err) }
        let pid = try CLI.spawn([CLI.binary, "boot", "--timeout", "120"], stdout: out, stderr: err)
        usleep(1_500_000) // well into the kernel's boot
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7f) == 0
        #expect(exited, "swiftlet died of a signal instead of handling it")
        #expect((status >> 8) & 0xff == 128 + signal)
        let stderr = CLI.readText(err)
        #expect(stderr.contains("stopped: signal \(signal)"), "stderr: \(stderr)")
    }
}
