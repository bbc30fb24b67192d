import Glibc
import SwiftletSys
import Testing
import SwiftletTestSupport

/// `--drive PATH,ephemeral` and `--rootfs PATH,ephemeral`: bad combinations.
@Suite(.serialized)
struct EphemeralCLITests {
    @Test func readOnlyAndEphemeralTogetherAreOneLine() throws {
        for args in [["--drive", "/tmp/x.img,ro,ephemeral"], ["--rootfs", "/tmp/x.img,ephemeral,ro"]] {
            let r = try CLI.run(["boot"] + args, timeout: 60)
            #expect(r.status == 1, "stderr: \(r.stderr)")
            #expect(r.stderrLines.count == 1, "stderr: \(r.stderr)")
            #expect(r.stderr.hasPrefix("swiftlet: error: "), "stderr: \(r.stderr)")
            #expect(r.stderr.contains("ro and ephemeral"), "stderr: \(r.stderr)")
        }
    }
}

/// One real boot from an ephemeral root: the guest writes and reads back its
/// file, the VMM is SIGKILLed, and the image is byte for byte what it was,
/// with no overlay left anywhere.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct EphemeralBootTests {
    static var rootfs: String { Images.cache + "/default/rootfs.ext4" }

    func sh(_ command: String) throws -> Int32 {
        let pid = try CLI.spawn(["/bin/sh", "-c", command], stdout: "/dev/null", stderr: "/dev/null")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status >> 8) & 0xff
    }

    func entries(_ directory: String) -> [String] { directoryNames(atPath: directory) ?? ["<cannot open>"] }

    /// The targets of the process's descriptors.
    func descriptorTargets(_ pid: pid_t) -> [String] {
        entries("/proc/\(pid)/fd").map { fd in
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/\(pid)/fd/\(fd)", &buf, buf.count - 1)
            return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        }
    }

    @Test("ephemeral root: the guest reads its own write, SIGKILL leaves no overlay, the image is unchanged")
    func guestWritesVanish() throws {
        try #require(access(Self.rootfs, R_OK) == 0, "run `make rootfs` first")
        let root = try CLI.tempFile("ephemeral-root")
        defer { unlink(root) }
        try #require(try sh("cp --sparse=always '\(Self.rootfs)' '\(root)'") == 0)
        var template = Array("/tmp/swiftlet-test-overlay-XXXXXX".utf8CString)
        try #require(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) } != nil)
        let overlayDir = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { rmdir(overlayDir) }
        let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
        defer { unlink(out); unlink(err) }

        let script = [
            "echo ephemeral-write > /root/f", "sync", "mount -t proc proc /proc",
            "echo 3 > /proc/sys/vm/drop_caches", "echo read-back=$(cat /root/f)", "echo ready-$((40 + 2))", "sleep 900",
        ].joined(separator: "; ")
        let pid = try CLI.spawn(["env", "TMPDIR=\(overlayDir)", CLI.binary, "boot", "--rootfs", "\(root),ephemeral",
                                 "--timeout", "900", "--append", "SWIFTLET_INIT_RUN=\"\(script)\""], stdout: out, stderr: err)
        var status: Int32 = 0
        var exited = false
        defer { if !exited { kill(pid, SIGKILL); waitpid(pid, &status, 0) } }
        // Wait for the guest (a boot takes a minute where the kernel is emulated). Init
        // echoes the command first: the marker is computed so that echo cannot match.
        var ready = false
        for _ in 0..<1800 {
            if CLI.readText(out).contains("ready-42") { ready = true; break }
            if waitpid(pid, &status, WNOHANG) == pid { exited = true; break }
            usleep(200_000)
        }
        let console = CLI.readText(out)
        try #require(ready, "guest never got there; stdout tail: \(console.suffix(2000)); stderr: \(CLI.readText(err))")
        #expect(console.contains("read-back=ephemeral-write"))
        // The overlay: an open, nameless file in $TMPDIR, nothing in the directory.
        let targets = descriptorTargets(pid)
        #expect(targets.contains { $0.hasPrefix(overlayDir + "/") && $0.hasSuffix(" (deleted)") }, "descriptors: \(targets)")
        #expect(entries(overlayDir).isEmpty)

        kill(pid, SIGKILL)
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exited = true
        #expect(status & 0x7f == SIGKILL)
        #expect(entries(overlayDir).isEmpty, "left behind: \(entries(overlayDir))")
        #expect(try sh("cmp -s '\(Self.rootfs)' '\(root)'") == 0, "the ephemeral base changed")
        // The guest's file is not in the image.
        #expect(try sh("debugfs -R 'stat /root/f' '\(root)' 2>&1 | grep -q 'File not found'") == 0)
    }
}
