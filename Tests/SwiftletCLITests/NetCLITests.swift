import Glibc
import Testing
import SwiftletTestSupport

/// A network namespace the test owns: created on init, deleted on deinit.
/// Everything networked in these tests runs inside one (`ip netns exec`), so
/// no traffic leaves it.
final class NetNamespace {
    let name: String

    init() throws {
        var g = SystemRandomNumberGenerator()
        name = "swltest-\(getpid())-\(UInt32.random(in: 0...UInt32.max, using: &g))"
        let r = try NetNamespace.sh("ip netns add \(name)")
        guard r == 0 else { throw CLI.SpawnError(errno: EPERM) }
    }

    deinit { _ = try? NetNamespace.sh("ip netns del \(name)") }

    /// Runs `/bin/sh -c script` on the host; its exit status.
    @discardableResult
    static func sh(_ script: String) throws -> Int32 {
        let out = try CLI.tempFile("sh")
        defer { unlink(out) }
        let pid = try CLI.spawn(["sh", "-c", script], stdout: out, stderr: out)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return CLI.exitCode(status)
    }

    /// `ip netns exec NAME argv...` in the background.
    func start(_ argv: [String], stdin: String = "/dev/null") throws -> CLI.Running {
        let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
        return CLI.Running(pid: try CLI.spawn(["ip", "netns", "exec", name] + argv, stdin: stdin, stdout: out, stderr: err),
                           stdoutPath: out, stderrPath: err)
    }

    /// `swiftlet args...` inside the namespace, to the end.
    func swiftlet(_ args: [String], prefix: [String] = [], seconds: Int = 600) throws -> CLIResult {
        try start(["timeout", String(seconds)] + prefix + [CLI.binary] + args).wait(seconds: seconds + 5)
    }

    /// The names of the namespace's interfaces.
    var links: [String] {
        let out = (try? CLI.tempFile("links")) ?? "/tmp/swltest-links"
        defer { unlink(out) }
        _ = try? NetNamespace.sh("ip netns exec \(name) ls /sys/class/net > \(out)")
        return CLI.readText(out).split(separator: "\n").map(String.init)
    }
    var taps: [String] { links.filter { $0.hasPrefix("swl") } }
}

/// `--net` input errors: one line, exit 1 (`boot`) or 125 (`run`), no TAP left.
@Suite(.serialized)
struct NetBadInputTests {
    @Test func malformedSpecsAndMACs() throws {
        for spec in ["bogus", "auto,mac=zz:00:00:00:00:00", "auto,mac=01:00:00:00:00:01", "auto,mac=02:00:00:00:00",
                     "tap=", "tap=a/b", "tap=waytoolongname0123", "auto,tap=x", "auto,auto"] {
            let b = try CLI.run(["boot", "--net", spec])
            #expect(b.status == 1, "\(spec): \(b.stderr)")
            #expect(b.stderrLines.count == 1 && b.stderr.hasPrefix("swiftlet: error: net: "), "\(spec): \(b.stderr)")
            let r = try CLI.run(["run", "--net", spec, "--", "true"])
            #expect(r.status == 125, "\(spec): \(r.stderr)")
            #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: net: "), "\(spec): \(r.stderr)")
        }
    }

    @Test func missingTapNonTapAndNoCapability() throws {
        let ns = try NetNamespace()
        var r = try ns.swiftlet(["boot", "--net", "tap=nosuch0"])
        #expect(r.status == 1)
        #expect(r.stderrLines == ["swiftlet: error: net: no TAP device named 'nosuch0' (create it first, e.g. ip tuntap add dev nosuch0 mode tap)"])
        r = try ns.swiftlet(["run", "--net", "tap=nosuch0", "--", "true"])
        #expect(r.status == 125)
        #expect(r.stderrLines.count == 1 && r.stderr.contains("no TAP device named 'nosuch0'"))
        #expect(ns.links == ["lo"], "attaching never creates a TAP")

        r = try ns.swiftlet(["boot", "--net", "tap=lo"])
        #expect(r.status == 1)
        #expect(r.stderrLines == ["swiftlet: error: net: 'lo' is not a free TAP device (in use by another process, or not a TAP)"])

        let drop = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]
        r = try ns.swiftlet(["boot", "--net", "auto"], prefix: drop)
        #expect(r.status == 1)
        #expect(r.stderrLines.count == 1 && r.stderr.contains("needs CAP_NET_ADMIN"), "\(r.stderr)")
        r = try ns.swiftlet(["run", "--net", "auto", "--", "true"], prefix: drop)
        #expect(r.status == 125)
        #expect(r.stderrLines.count == 1 && r.stderr.contains("needs CAP_NET_ADMIN"), "\(r.stderr)")
        #expect(ns.taps.isEmpty, "no half-made TAP")
    }

    @Test(.enabled(if: KVMGate.enabled, KVMGate.skipMessage))
    func tapInUseIsRefused() throws {
        let ns = try NetNamespace()
        try #require(try NetNamespace.sh("ip netns exec \(ns.name) ip tuntap add dev t0 mode tap && ip netns exec \(ns.name) ip link set t0 up") == 0)
        // The first VM holds t0 (attached before any VM work; the carrier goes up with it).
        let first = try ns.start([CLI.binary, "boot", "--net", "tap=t0", "--timeout", "30"])
        defer { kill(first.pid, SIGKILL); _ = try? first.wait(seconds: 10) }
        var attached = false
        for _ in 0..<100 {
            if try NetNamespace.sh("ip netns exec \(ns.name) grep -q 1 /sys/class/net/t0/carrier") == 0 { attached = true; break }
            usleep(100_000)
        }
        try #require(attached)
        let r = try ns.swiftlet(["boot", "--net", "tap=t0"])
        #expect(r.status == 1)
        #expect(r.stderrLines == ["swiftlet: error: net: 't0' is not a free TAP device (in use by another process, or not a TAP)"])
    }
}

/// The TAP that `--net auto` makes goes with the process on every path.
@Suite(.serialized, .enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct NetTapLifetimeTests {
    func startAndWaitForTap(_ ns: NetNamespace, _ args: [String]) throws -> CLI.Running {
        let run = try ns.start([CLI.binary] + args)
        for _ in 0..<200 {
            if !ns.taps.isEmpty { return run }
            usleep(50_000)
        }
        kill(run.pid, SIGKILL)
        _ = try run.wait(seconds: 10)
        throw CLI.SpawnError(errno: ETIMEDOUT)
    }

    @Test(arguments: [SIGTERM, SIGKILL])
    func tapGoneAfterSignal(_ signal: Int32) throws {
        let ns = try NetNamespace()
        let run = try startAndWaitForTap(ns, ["run", "--net", "auto", "--", "sleep", "100"])
        #expect(ns.taps == ["swl\(run.pid)n0"], "named after the pid")
        kill(run.pid, signal)
        let r = try run.wait(seconds: 60)
        #expect(r.status == 128 + signal)
        #expect(ns.taps.isEmpty, "TAP removed after signal \(signal)")
    }

    @Test func bootTapGoneAfterSIGTERM() throws {
        let ns = try NetNamespace()
        let run = try startAndWaitForTap(ns, ["boot", "--net", "auto"])
        kill(run.pid, SIGTERM)
        let r = try run.wait(seconds: 60)
        #expect(r.status == 128 + SIGTERM)
        #expect(r.stderr.contains("swiftlet: net: tap swl\(run.pid)n0 mac 02:"), "\(r.stderr)")
        #expect(r.stderr.contains("host 172.30.0.1 guest 172.30.0.2/30"))
        #expect(ns.taps.isEmpty)
    }
}

/// A guest crash (init exits: the kernel panics) ends `boot` with status 2, TAP gone.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct NetGuestCrashTests {
    @Test func tapGoneAfterGuestPanic() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let ns = try NetNamespace()
        let r = try ns.swiftlet(["boot", "--net", "auto", "--append", "init=/bin/false", "--timeout", "300"], seconds: 320)
        #expect(r.status == 2, "\(r.stderr)")
        #expect(ns.taps.isEmpty, "TAP removed after a guest crash")
    }
}

/// Real guests on `--net auto` (each test boots; about 35 s per boot here).
@Suite(.serialized, .enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct NetGuestTests {
    /// Bytes per transfer: 256 KiB by default (`SWIFTLET_NET_TEST_KIB`). The
    /// guest kernel runs emulated on the development hosts, so its TCP moves
    /// about 50 KiB/s there; 50 MiB would take half an hour.
    static var bytes: Int { (getenv("SWIFTLET_NET_TEST_KIB").flatMap { Int(String(cString: $0)) } ?? 256) << 10 }

    @Test("ping the host; TCP both ways to a host listener and from the host to a guest listener, byte-exact; TAP gone after")
    func pingAndTCP() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let ns = try NetNamespace()
        var rng = SystemRandomNumberGenerator()
        let a = (0..<Self.bytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let b = (0..<Self.bytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let inA = try CLI.writeFile(a), inB = try CLI.writeFile(b)
        let out1 = try CLI.tempFile("net1"), out2 = try CLI.tempFile("net2"), fifo = try CLI.tempFile("fifo")
        defer { for p in [inA, inB, out1, out2, fifo] { unlink(p) } }
        unlink(fifo)
        try #require(mkfifo(fifo, 0o600) == 0)
        // Host side, all busybox nc. Receivers read stdin from a FIFO held open,
        // so they never half-close early; senders half-close at their EOF.
        let host = """
        exec 3<>\(fifo)
        busybox nc -l -p 7000 < \(inA) &
        busybox nc -l -p 7001 <&3 > \(out1) &
        busybox nc -l -p 7002 <&3 > \(out2) &
        i=0; until busybox nc 172.30.0.2 8000 < \(inB) 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && exit 9; sleep 1; done
        wait
        """
        let hostRun = try ns.start(["sh", "-c", host])
        defer { kill(hostRun.pid, SIGKILL) }
        let guest = """
        H=$SWIFTLET_HOST_IP; mkfifo /tmp/f; exec 3<>/tmp/f
        ping -c 1 -W 10 $H >/dev/null && echo ping-ok
        nc $H 7000 <&3 > /tmp/a && nc $H 7001 < /tmp/a && echo to-host-ok
        nc -l -p 8000 <&3 > /tmp/b && nc $H 7002 < /tmp/b && echo from-host-ok
        echo "guest=$SWIFTLET_GUEST_IP"
        """
        let start = time(nil)
        let r = try ns.swiftlet(["run", "--net", "auto", "--", "sh", "-c", guest], seconds: 900)
        let seconds = time(nil) - start
        print("net-test: \(Self.bytes) bytes x4 transfers, run took \(seconds) s")
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "ping-ok\nto-host-ok\nfrom-host-ok\nguest=172.30.0.2\n", "stderr: \(r.stderr)")
        let hostResult = try hostRun.wait(seconds: 30)
        #expect(hostResult.status == 0)
        #expect(CLI.readBytes(out1) == a, "host -> guest (guest connects) -> host, byte-exact")
        #expect(CLI.readBytes(out2) == b, "host -> guest listener -> host, byte-exact")
        #expect(ns.taps.isEmpty, "TAP removed after a clean exit")
    }

    @Test("--image with --net: the image gets /etc/hosts with the guest's address and /etc/resolv.conf with the host's name servers",
          .enabled(if: TestImages.enabled, TestImages.skipMessage))
    func imageNetFiles() throws {
        let ns = try NetNamespace()
        let image = try TestImages.path("rootfs.tar.gz")
        let r = try ns.swiftlet(["run", "--image", image, "--net", "auto", "--", "sh", "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf 2>/dev/null; true"],
                                prefix: ["env", "SWIFTLET_IMAGE_CACHE=\(SharedImageCache.path)"], seconds: 900)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let cut = try #require(lines.firstIndex(of: "---"), "stdout: \(r.stdout)")
        #expect(lines[..<cut].contains("127.0.0.1 localhost") && lines[..<cut].contains("172.30.0.2 swiftlet"), "\(r.stdout)")
        // The host's own non-loopback servers, as the guest reaches the host's resolver through the TAP's routing.
        let hostServers = CLI.readText("/etc/resolv.conf").split(separator: "\n").compactMap { line -> String? in
            let w = line.split(separator: " ")
            return w.count >= 2 && w[0] == "nameserver" && !w[1].hasPrefix("127.") && w[1] != "::1" ? "nameserver \(w[1])" : nil
        }
        // The test image has no resolv.conf of its own: without host servers there is none.
        #expect(Array(lines[(cut + 1)...]) == hostServers, "\(r.stdout)")
        #expect(ns.taps.isEmpty)
    }

    @Test("two VMs on separate TAPs reach their hosts but not each other")
    func twoVMsAreIsolated() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let ns = try NetNamespace()
        // The host side does not forward (a new namespace has ip_forward=0):
        // each guest reaches its own host address, and the other guest not at all.
        let script = """
        H=$SWIFTLET_HOST_IP; G=$SWIFTLET_GUEST_IP
        if [ "$G" = 172.30.0.2 ]; then O=172.30.0.6; else O=172.30.0.2; fi
        ping -c 1 -W 10 $H >/dev/null && echo host-ok
        sleep 20
        if ping -c 2 -W 3 $O >/dev/null 2>&1; then echo reached; else echo isolated; fi
        """
        let one = try ns.start(["timeout", "600", CLI.binary, "run", "--net", "auto", "--", "sh", "-c", script])
        let two = try ns.start(["timeout", "600", CLI.binary, "run", "--net", "auto", "--", "sh", "-c", script])
        let r1 = try one.wait(seconds: 610), r2 = try two.wait(seconds: 610)
        #expect(r1.stdout == "host-ok\nisolated\n", "\(r1.stderr)")
        #expect(r2.stdout == "host-ok\nisolated\n", "\(r2.stderr)")
        #expect(ns.taps.isEmpty)
    }
}
