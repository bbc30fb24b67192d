import Glibc
import Testing
import SwiftletTestSupport

/// Snapshot and restore through the CLI: `swiftlet run` restores the cached
/// snapshot of the default kernel and rootfs (created once per `make test`,
/// in `$SWIFTLET_SNAPSHOT_CACHE`), and refuses snapshots it cannot trust.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct SnapshotTests {
    /// The cached snapshot of the default machine (created by the first caller).
    static func cachedSnapshot() throws -> String {
        try RunTests.requireImages()
        let r = try CLI.run(["snapshot", "cached"])
        try #require(r.status == 0, "snapshot cached: \(r.stderr)")
        return r.stdout.trimmingCharacters(in: "\n")
    }

    /// A writable copy of the cached snapshot, to corrupt.
    static func copyOfSnapshot() throws -> String {
        let source = try cachedSnapshot()
        let dir = try CLI.tempDirectory("snapcopy")
        try #require(shell("cp --sparse=always '\(source)/state' '\(source)/memory' '\(dir)/' && chmod u+w '\(dir)'/*") == 0)
        return dir
    }

    @Test("run restores the cached snapshot by default: output, stderr and exit status as for a boot, in seconds")
    func restoredRun() throws {
        _ = try Self.cachedSnapshot()
        // Options inline (`--opt=value`) and separate: `run`'s fast parser takes both.
        let r = try CLI.run(["run", "--timings", "--env=GREETING=hi there", "--workdir", "/etc", "--",
                             "sh", "-c", "echo out; echo \"$GREETING\" $(pwd); echo err >&2; exit 7"])
        #expect(r.status == 7, "stderr: \(r.stderr)")
        #expect(r.stdout == "out\nhi there /etc\n")
        #expect(r.stderr.hasPrefix("err\n"))
        #expect(r.stderr.contains("start=snapshot"), "stderr: \(r.stderr)")
    }

    @Test("after a restore the clock goes on from the snapshot's, the wall clock is the host's, a 1 s timeout takes a second and sleep 1 at least one")
    func clockAndTimers() throws {
        let dir = try Self.cachedSnapshot()
        let show = try CLI.run(["snapshot", "show", dir])
        let parked = show.stdout.split(separator: "\n").first { $0.hasPrefix("guest-clock-ns=") }.flatMap { Double($0.dropFirst(15)) }
        let guestClockAtSnapshot = try #require(parked, "snapshot show: \(show.stdout)") / 1e9
        // Shell builtins only (no exec in between): uptime, a 1 s read timeout on an empty FIFO, uptime.
        // Then `sleep 1`, which also pays for a fork and exec of the emulated guest kernel.
        let script = "mkfifo /tmp/f; exec 3<>/tmp/f; read a b < /proc/uptime; read -t 1 x <&3; read c d < /proc/uptime; echo $a; echo $c; date +%s; "
            + "sleep 1; read e f < /proc/uptime; echo $e"
        for _ in 0..<2 {
            let r = try CLI.run(["run", "--snapshot", dir, "--", "sh", "-c", script])
            try #require(r.status == 0, "stderr: \(r.stderr)")
            let v = r.stdout.split(separator: "\n").compactMap { Double($0) }
            try #require(v.count == 4, "stdout: \(r.stdout)")
            let now = Double(time(nil))
            #expect(v[0] >= guestClockAtSnapshot - 0.01, "uptime \(v[0]) s after restore, \(guestClockAtSnapshot) s at the snapshot")
            #expect(v[1] - v[0] >= 0.95 && v[1] - v[0] < 2, "a 1 s timeout took \(v[1] - v[0]) s of guest uptime")
            #expect(abs(v[2] - now) < 30, "guest date \(v[2]), host \(now)")
            // At least a second; the rest is two fork/execs of the emulated guest kernel, several seconds under load.
            #expect(v[3] - v[1] >= 1 && v[3] - v[1] < 60, "date and sleep 1 took \(v[3] - v[1]) s of guest uptime")
        }
    }

    @Test("two restored VMs read different bytes from /dev/urandom")
    func freshRandomness() throws {
        let dir = try Self.cachedSnapshot()
        var seen: [String] = []
        for _ in 0..<2 {
            let r = try CLI.run(["run", "--snapshot", dir, "--", "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            seen.append(r.stdout.filter { !$0.isWhitespace })
        }
        #expect(seen[0].count == 64)
        #expect(seen[0] != seen[1], "both clones read \(seen[0])")
    }

    @Test("8 VMs restored at once from one snapshot run their own jobs in isolation, sharing the snapshot's pages")
    func concurrentRestores() throws {
        let dir = try Self.cachedSnapshot()
        var runs: [CLI.Running] = []
        for i in 0..<8 {
            runs.append(try CLI.start(["run", "--snapshot", dir, "--env", "N=\(i)", "--",
                                       "sh", "-c", "echo $N > /root/id; echo ready; sleep 5; cat /root/id"]))
        }
        var ready = 0
        for r in runs where r.waitForStdout("ready", seconds: 300) { ready += 1 }
        // All eight are alive with their guests running: sum their proportional set sizes.
        var pss = 0, rss = 0
        for r in runs {
            pss += memoryField("/proc/\(r.pid)/smaps_rollup", "Pss:")
            rss = max(rss, memoryField("/proc/\(r.pid)/status", "VmRSS:"))
        }
        var outputs: [String] = []
        for r in runs {
            let result = try r.wait(seconds: 300)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            outputs.append(result.stdout)
        }
        #expect(ready == 8)
        #expect(outputs == (0..<8).map { "ready\n\($0)\n" })
        let guestKiB = 8 * 128 * 1024
        #expect(pss > 0 && pss < guestKiB / 2, "8 restored VMs: \(pss) KiB PSS together (largest RSS \(rss) KiB); 8 guests' memory is \(guestKiB) KiB")
    }

    @Test("a file on a writable data drive attached at snapshot time is there after restore, and a restored guest's writes persist")
    func dataDriveSurvives() throws {
        try RunTests.requireImages()
        let work = try CLI.tempDirectory("snapdata")
        defer { _ = shell("rm -rf '\(work)'") }
        let data = work + "/data.ext4"
        let note = work + "/note"
        #expect(shell("printf 'written before the snapshot\\n' > '\(note)' && mkfs.ext4 -q -F '\(data)' 16M && debugfs -w -R 'write \(note) note' '\(data)' >/dev/null 2>&1") == 0)
        let snap = work + "/snap"
        let created = try CLI.run(["snapshot", "create", "--output", snap, "--drive", data])
        try #require(created.status == 0, "snapshot create: \(created.stderr)")
        let first = try CLI.run(["run", "--snapshot", snap, "--", "sh", "-c",
                                 "mkdir -p /d && mount /dev/vdb /d && cat /d/note && echo from-restore > /d/second && umount /d"])
        #expect(first.status == 0, "stderr: \(first.stderr)")
        #expect(first.stdout == "written before the snapshot\n")
        let second = try CLI.run(["run", "--snapshot", snap, "--", "sh", "-c", "mkdir -p /d && mount -o ro /dev/vdb /d && cat /d/second"])
        #expect(second.stdout == "from-restore\n", "stderr: \(second.stderr)")
        // Another image in the drive's place must have the same size.
        let other = work + "/other.ext4"
        #expect(shell("truncate -s 8M '\(other)'") == 0)
        let wrong = try CLI.run(["run", "--snapshot", snap, "--drive", other, "--", "true"])
        #expect(wrong.status == 125)
        #expect(wrong.stderr.contains("snapshot mismatch: drive"), "stderr: \(wrong.stderr)")
    }

    @Test("a truncated memory file, a flipped state byte, another format or Swiftlet version, and another kernel are each refused")
    func corruptSnapshots() throws {
        func refused(_ dir: String, _ extra: [String] = [], phrase: String) throws {
            let r = try CLI.run(["run", "--snapshot", dir] + extra + ["--", "true"])
            #expect(r.status == 125, "\(phrase): status \(r.status)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(phrase), "expected '\(phrase)': \(r.stderr)")
        }
        let truncated = try Self.copyOfSnapshot()
        #expect(shell("truncate -s -4096 '\(truncated)/memory'") == 0)
        try refused(truncated, phrase: "corrupt snapshot: \(truncated)/memory is")

        let flipped = try Self.copyOfSnapshot()
        var state = CLI.readBytes(flipped + "/state")
        state[state.count / 2] ^= 0x01
        try writeBytes(state, to: flipped + "/state")
        try refused(flipped, phrase: "fails its checksum")

        let format = try Self.copyOfSnapshot()
        state = CLI.readBytes(format + "/state")
        state[8] = 99
        try writeBytes(state, to: format + "/state")
        try refused(format, phrase: "incompatible snapshot: \(format) has snapshot format 99")

        // Another Swiftlet version, with a valid checksum: the payload opens with it.
        let version = try Self.copyOfSnapshot()
        state = CLI.readBytes(version + "/state")
        let length = Int(state[56])
        for i in 60..<(60 + length) where state[i] >= UInt8(ascii: "0") && state[i] <= UInt8(ascii: "9") { state[i] = UInt8(ascii: "9") }
        let payload = try CLI.writeFile(Array(state[56...]))
        defer { unlink(payload) }
        let digest = try sha256(payload).prefix(64)
        let hex = Array(digest.utf8)
        for i in 0..<32 { state[24 + i] = UInt8(strtoul(String(decoding: hex[(2 * i)..<(2 * i + 2)], as: UTF8.self), nil, 16)) }
        try writeBytes(state, to: version + "/state")
        try refused(version, phrase: "was taken by Swiftlet 9.9.9")

        // The same kernel with one byte more is not the kernel the guest is running.
        let kernel = try CLI.tempFile("kernel")
        defer { unlink(kernel) }
        #expect(shell("cp '\(Images.bzImage)' '\(kernel)' && printf x >> '\(kernel)'") == 0)
        try refused(try Self.cachedSnapshot(), ["--kernel", kernel], phrase: "snapshot mismatch: kernel \(kernel) is not the one")

        // A state "file" that is a device is refused unread.
        let device = try CLI.tempDirectory("snapdev")
        #expect(shell("ln -s /dev/zero '\(device)/state' && touch '\(device)/memory'") == 0)
        try refused(device, phrase: "is not a regular file")

        for dir in [truncated, flipped, format, version, device] { _ = shell("rm -rf '\(dir)'") }
    }

    /// The memory file is checked on the descriptor that maps it, but it can
    /// still be cut short under the private mapping while the guest runs.
    /// Whichever touches a lost page first, the VMM (SIGBUS, now one line and
    /// 125) or the guest through KVM (a fault the guest dies of), `run` ends
    /// with one line and 125: it used to die by SIGBUS, or by SIGSYS when the
    /// Swift runtime's crash handler ran under seccomp (159).
    @Test("a memory file cut short while the restored guest runs: 125 and one line, never a crash")
    func memoryFileCutWhileRunning() throws {
        let dir = try Self.copyOfSnapshot()
        defer { _ = shell("rm -rf '\(dir)'") }
        let run = try CLI.start(["run", "--snapshot", dir, "--", "sh", "-c", "sleep 2; cat /bin/busybox | wc -c; ls /usr/bin | wc -l"])
        usleep(1_200_000)
        #expect(shell("truncate -s 0 '\(dir)/memory'") == 0)
        let r = try run.wait(seconds: 120)
        #expect(r.status == 125, "stderr: \(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1, "stderr: \(r.stderr)")
    }
}

/// A `Key:   N kB` field of a /proc file, in KiB (0 when missing).
func memoryField(_ path: String, _ key: String) -> Int {
    for line in CLI.readText(path).split(separator: "\n") where line.hasPrefix(key) {
        return Int(line.dropFirst(key.count).split(separator: " ").first ?? "") ?? 0
    }
    return 0
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    guard let f = fopen(path, "w") else { throw CLI.SpawnError(errno: errno) }
    defer { fclose(f) }
    _ = fwrite(bytes, 1, bytes.count, f)
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
