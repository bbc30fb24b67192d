import Glibc
import Testing
import SwiftletTestSupport

/// virtio-blk end to end: the guest's root on /dev/vda, more drives after it.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct BlockTests {
    static var rootfs: String { Images.cache + "/default/rootfs.ext4" }

    func copy(_ path: String) throws -> String {
        let dst = try CLI.tempFile("root")
        let r = try shell("cp --sparse=always '\(path)' '\(dst)'")
        try #require(r == 0)
        return dst
    }

    func zeroImage(bytes: Int) throws -> String {
        let path = try CLI.tempFile("img")
        try #require(truncate(path, off_t(bytes)) == 0)
        return path
    }

    func shell(_ command: String) throws -> Int32 {
        let pid = try CLI.spawn(["/bin/sh", "-c", command], stdout: "/dev/null", stderr: "/dev/null")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status >> 8) & 0xff
    }

    func firstBytes(_ path: String, _ n: Int) -> [UInt8] {
        guard let f = fopen(path, "r") else { return [] }
        defer { fclose(f) }
        var b = [UInt8](repeating: 0, count: n)
        let got = fread(&b, 1, n, f)
        return Array(b[0..<got])
    }

    @Test("root on virtio-blk: a file the guest writes is in the image; a read-only drive refuses writes; more drives are vdb, vdc")
    func rootAndDrives() throws {
        try #require(access(Self.rootfs, R_OK) == 0, "run `make rootfs` first")
        let root = try copy(Self.rootfs), data = try zeroImage(bytes: 8 << 20), scratch = try zeroImage(bytes: 4 << 20)
        defer { unlink(root); unlink(data); unlink(scratch) }
        let script = [
            "mount -t sysfs sys /sys", "echo swiftlet-blk > /written.txt", "sync",
            "echo ro=$(cat /sys/block/vda/ro)$(cat /sys/block/vdb/ro)$(cat /sys/block/vdc/ro)",
            "echo serial=$(cat /sys/block/vdb/serial)",
            "echo junk > /dev/vdb; echo vdb-write-status=$?",
            "printf swiftlet-vdc | dd of=/dev/vdc conv=fsync 2>/dev/null; echo vdc-write-status=$?",
            "echo vdc-read=$(dd if=/dev/vdc bs=12 count=1 2>/dev/null)",
        ].joined(separator: "; ")
        let r = try CLI.run([
            "boot", "--rootfs", root, "--drive", "\(data),ro,id=data0", "--drive", scratch, "--timeout", "900",
            "--stats", "--append", "SWIFTLET_INIT_RUN=\"\(script)\"",
        ])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("EXT4-fs (vda): mounted filesystem"))
        #expect(r.stdout.contains("VFS: Mounted root (ext4 filesystem)"))
        #expect(r.stdout.contains("ro=010"))
        #expect(r.stdout.contains("serial=data0"))
        #expect(r.stdout.contains("vdb-write-status=1"))
        #expect(r.stdout.contains("vdc-write-status=0"))
        #expect(r.stdout.contains("vdc-read=swiftlet-vdc"))
        #expect(r.stdout.contains("swiftlet-init: command exited with status 0"))
        // The file reached the image: read it on the host without mounting.
        let out = try CLI.tempFile("debugfs")
        defer { unlink(out) }
        _ = try shell("debugfs -R 'cat /written.txt' '\(root)' > '\(out)' 2>/dev/null")
        #expect(CLI.readText(out) == "swiftlet-blk\n")
        #expect(firstBytes(data, 4096).allSatisfy { $0 == 0 }, "the read-only image changed")
        #expect(firstBytes(scratch, 12) == Array("swiftlet-vdc".utf8))
    }
}

/// Bad drive input: one line, status 1, image untouched.
@Suite(.enabled(if: KVMGate.enabled && Images.present, KVMGate.skipMessage), .serialized)
struct BadDriveTests {
    func expectOneLineError(_ args: [String], containing text: String) throws {
        let r = try CLI.run(["boot"] + args, timeout: 60)
        #expect(r.status == 1, "stderr: \(r.stderr)")
        #expect(r.stderrLines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.hasPrefix("swiftlet: error: "))
        #expect(r.stderr.contains(text), "stderr: \(r.stderr)")
    }

    @Test func missingImage() throws {
        try expectOneLineError(["--drive", "/nonexistent/disk.img"], containing: "/nonexistent/disk.img")
        try expectOneLineError(["--rootfs", "/nonexistent/root.img"], containing: "/nonexistent/root.img")
    }

    @Test func sizeNotAMultipleOf512() throws {
        let path = try CLI.tempFile("odd")
        defer { unlink(path) }
        try #require(truncate(path, 1000) == 0)
        try expectOneLineError(["--drive", path], containing: "512")
        var st = stat()
        stat(path, &st)
        #expect(st.st_size == 1000)
    }

    @Test func badDriveOption() throws {
        try expectOneLineError(["--drive", "/tmp/x.img,rw"], containing: "unknown option 'rw'")
        try expectOneLineError(["--drive", "/tmp/x.img,id=\(String(repeating: "x", count: 21))"], containing: "id must be")
    }

    @Test func sameImageTwiceWritable() throws {
        let path = try CLI.tempFile("twice")
        defer { unlink(path) }
        try #require(truncate(path, 1 << 20) == 0)
        try expectOneLineError(["--drive", path, "--drive", path], containing: "in use")
    }

    @Test(.enabled(if: getuid() == 0, "chattr +i needs root"))
    func readOnlyFileWithoutRO() throws {
        let path = try CLI.tempFile("immutable")
        try #require(truncate(path, 1 << 20) == 0)
        let pid = try CLI.spawn(["chattr", "+i", path], stdout: "/dev/null", stderr: "/dev/null")
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        defer {
            let p = try? CLI.spawn(["chattr", "-i", path], stdout: "/dev/null", stderr: "/dev/null")
            if let p { waitpid(p, &status, 0) }
            unlink(path)
        }
        try #require(status == 0, "chattr is not supported here")
        try expectOneLineError(["--drive", path], containing: "read-only")
    }
}
