import Glibc
import SwiftletSys
import Testing
import SwiftletTestSupport

/// `swiftlet run`: real boots of the default kernel and rootfs with the guest
/// agent. Each boot costs tens of seconds where the guest kernel is emulated
/// (nested PVM), so each test checks as much as one boot can show.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct RunTests {
    static func requireImages() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
    }

    @Test("a cold boot (--cold): uname -a, stdout and stderr kept apart, --env, --workdir and the exit status in one run")
    func outputEnvWorkdir() throws {
        try Self.requireImages()
        let r = try CLI.run(["run", "--cold", "--env", "GREETING=hello world", "--env", "EMPTY=", "--workdir", "/etc", "--timings", "--",
                             "sh", "-c", "uname -a; echo \"$GREETING\"; echo \"[$EMPTY]\"; pwd; echo to-stderr >&2; exit 3"])
        let out = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(out.first?.hasPrefix("Linux swiftlet 6.1.") == true, "stdout: \(r.stdout)")
        #expect(Array(out.dropFirst()) == ["hello world", "[]", "/etc", ""])
        #expect(r.stderr.hasPrefix("to-stderr\n"), "stderr: \(r.stderr)")
        #expect(r.stderr.contains("swiftlet-timings: start=cold boot-ms="))
        #expect(r.status == 3)
    }

    @Test("exit statuses: 0, 1, 42, a signal (128+N) and 127 for a command that is not found",
          arguments: [(["true"], 0), (["false"], 1), (["sh", "-c", "exit 42"], 42), (["sh", "-c", "kill -9 $$"], 137),
                      (["no-such-command", "arg"], 127)] as [([String], Int32)])
    func exitStatus(command: [String], expected: Int32) throws {
        try Self.requireImages()
        let r = try CLI.run(["run", "--"] + command)
        #expect(r.status == expected, "stderr: \(r.stderr)")
        if expected == 127 {
            #expect(r.stderr.contains("no-such-command: command not found"))
        }
        if expected == 0 { #expect(r.stdout.isEmpty && r.stderr.isEmpty) }
    }

    @Test("10 MiB of binary stdin through `cat` comes back byte-exact (sha256), and the base image is not modified")
    func binaryStdinStdout() throws {
        try Self.requireImages()
        let input = try CLI.tempFile("in")
        defer { unlink(input) }
        #expect(shell("head -c 10485760 /dev/urandom > '\(input)'") == 0)
        let bytes = CLI.readBytes(input)
        #expect(bytes.count == 10 << 20)
        let before = try sha256(Images.rootfs)
        let r = try CLI.run(["run", "--", "sh", "-c", "echo written > /root/scratch; sync; cat"], stdin: input, binaryStdout: true)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdoutBytes.count == bytes.count)
        #expect(r.stdoutBytes == bytes)
        #expect(try sha256(Images.rootfs) == before)
    }

    @Test("--timeout kills the command: exit 124 soon after the limit, boot time aside")
    func timeout() throws {
        try Self.requireImages()
        let r = try CLI.run(["run", "--timeout", "1", "--timings", "--", "sh", "-c", "echo started; sleep 60"])
        #expect(r.status == 124, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("swiftlet: the command timed out after 1 s"))
        // From the agent's connection (the end of the boot) to the end of the
        // process: the job's start, the 1 s limit and the teardown.
        let afterBoot = (timing(r.stderr, "total-ms") ?? 1e9) - (timing(r.stderr, "boot-ms") ?? 0)
        #expect(afterBoot < 5000, "total-ms minus boot-ms = \(afterBoot); stderr: \(r.stderr)")
    }

    @Test("four concurrent runs share one base image, each isolated, and leave it unchanged")
    func concurrentIsolated() throws {
        try Self.requireImages()
        let before = try sha256(Images.rootfs)
        let runs = try (0..<4).map { i in
            try CLI.start(["run", "--", "sh", "-c", "echo \(i) > /root/mine-\(i); sleep 1; ls /root"])
        }
        for (i, run) in runs.enumerated() {
            let r = try run.wait()
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.stdout == "mine-\(i)\n", "run \(i) saw: \(r.stdout)")
        }
        #expect(try sha256(Images.rootfs) == before)
    }

    @Test("SIGINT or SIGTERM at each stage (boot, running, output) stops the run and leaves nothing behind",
          arguments: [("boot", SIGTERM), ("running", SIGINT), ("output", SIGTERM)] as [(String, Int32)])
    func signals(stage: String, signo: Int32) throws {
        try Self.requireImages()
        // A private TMPDIR shows whatever swiftlet would leave in one (its overlays go there).
        let tmp = try CLI.tempDirectory("sig")
        defer { rmdir(tmp) }
        let uds = "\(tmp)-\(stage).sock"
        let script = stage == "output" ? "echo ready; while :; do echo lots of output; done" : "echo ready; sleep 600"
        let run = try CLI.start(["run", "--vsock-uds", uds, "--", "sh", "-c", script], environment: ["TMPDIR=\(tmp)"])
        if stage == "boot" {
            usleep(1_500_000)
        } else {
            // Wait until the job runs (its first line arrives), then signal.
            let ready = run.waitForStdout("ready\n", seconds: 600)
            #expect(ready, "the job never started: \(CLI.readText(run.stderrPath))")
        }
        kill(run.pid, signo)
        let started = monotonicSeconds()
        let r = try run.wait()
        #expect(r.status == 128 + signo, "stderr: \(r.stderr)")
        #expect(monotonicSeconds() - started < 10)
        // No socket files, no temp files, no processes.
        #expect(access(uds, F_OK) != 0 && access(uds + "_52", F_OK) != 0)
        #expect(listDirectory(tmp).isEmpty, "left in TMPDIR: \(listDirectory(tmp))")
        #expect(kill(run.pid, 0) != 0)
    }

    @Test("bad input: one clear line and exit 125, before anything boots")
    func badInput() throws {
        let none = try CLI.run(["run"])
        #expect(none.status == 125)
        #expect(none.stderrLines == ["swiftlet: error: no command given (usage: swiftlet run [options] -- CMD [ARGS...])"])
        let missing = try CLI.run(["run", "--rootfs", "/nonexistent/root.ext4", "--", "true"])
        #expect(missing.status == 125)
        #expect(missing.stderrLines == ["swiftlet: error: rootfs /nonexistent/root.ext4: not found"])
        let env = try CLI.run(["run", "--env", "NOEQUALS", "--", "true"])
        #expect(env.status == 125)
        #expect(env.stderrLines.count == 1)
    }

    @Test("a rootfs without the agent: a clear error naming the cause, exit 125")
    func rootfsWithoutAgent() throws {
        try Self.requireImages()
        let image = try CLI.tempFile("noagent")
        defer { unlink(image) }
        #expect(shell("cp --sparse=always '\(Images.rootfs)' '\(image)' && debugfs -w -R 'rm /sbin/swiftlet-agent' '\(image)' >/dev/null 2>&1") == 0)
        let r = try CLI.run(["run", "--rootfs", image, "--", "true"])
        #expect(r.status == 125)
        #expect(r.stderrLines.count == 1, "stderr: \(r.stderr)")
        #expect(r.stderr.contains("agent"))
        #expect(r.stderr.contains("no agent at /sbin/swiftlet-agent"))
    }
}

func timing(_ stderr: String, _ key: String) -> Double? {
    for word in stderr.split(whereSeparator: { $0 == " " || $0 == "\n" }) where word.hasPrefix(key + "=") {
        return Double(word.dropFirst(key.count + 1))
    }
    return nil
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

@discardableResult
func shell(_ command: String) -> Int32 {
    let rc = system(command)
    return (rc >> 8) & 0xff
}

func sha256(_ path: String) throws -> String {
    let out = try CLI.tempFile("sha")
    defer { unlink(out) }
    _ = shell("sha256sum < '\(path)' > '\(out)'")
    return CLI.readText(out)
}
