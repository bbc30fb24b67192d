import Glibc
import Testing
import SwiftletTestSupport

/// An ordinary user, set up as the README says: a fresh system user with an
/// ACL on `/dev/kvm`, its own home (so its own `~/.cache/swiftlet`), and the
/// binary, kernel and rootfs copied where it can read them (the checkout may
/// sit under a root-only directory). Everything is removed afterwards: the
/// user, its ACL entry and its files.
final class NonRootUser: Sendable {
    static let name = "swiftlet-nonroot"
    /// The user's home, and beside it `pub/` with the binary and images.
    let home: String
    let binary: String, kernel: String, rootfs: String

    @TaskLocal static var current: NonRootUser?

    init() throws {
        Self.removeStale()
        let top = try CLI.tempDirectory("nonroot")
        home = top + "/home"
        let pub = top + "/pub"
        binary = pub + "/swiftlet"
        kernel = pub + "/bzImage"
        rootfs = pub + "/rootfs.ext4"
        let setup = [
            "chmod 755 '\(top)'", "mkdir -m 755 '\(pub)'",
            "useradd --system --user-group --home-dir '\(home)' --create-home --shell /usr/sbin/nologin \(Self.name)",
            "cp '\(CLI.binary)' '\(binary)'", "cp '\(Images.bzImage)' '\(kernel)'", "cp '\(Images.rootfs)' '\(rootfs)'",
            "chmod 755 '\(binary)'", "chmod 644 '\(kernel)' '\(rootfs)'",
            // The README's second way: an ACL where /dev/kvm (and here
            // /dev/net/tun, for tap=) is root's alone.
            "setfacl -m u:\(Self.name):rw /dev/kvm",
            "setfacl -m u:\(Self.name):rw /dev/net/tun",
        ]
        for step in setup {
            guard try NetNamespace.sh(step) == 0 else {
                _ = try? NetNamespace.sh("rm -rf '\(top)'")
                Self.removeStale()
                throw CLI.SpawnError(errno: EPERM)
            }
        }
    }

    /// Removes the user, its ACL entry and its files (also what a killed run left).
    func remove() {
        Self.removeStale()
        _ = try? NetNamespace.sh("rm -rf '\(String(home.dropLast("/home".count)))'")
    }

    static func removeStale() {
        _ = try? NetNamespace.sh("setfacl -x u:\(name) /dev/kvm 2>/dev/null; setfacl -x u:\(name) /dev/net/tun 2>/dev/null; pkill -KILL -u \(name) 2>/dev/null; userdel -r \(name) 2>/dev/null; true")
    }

    /// The user's view of `swiftlet args...`: its uid and group only, a login's
    /// environment (HOME, PATH; none of the test run's SWIFTLET_* variables).
    func argv(_ args: [String], netns: String? = nil) -> [String] {
        (netns.map { ["ip", "netns", "exec", $0] } ?? [])
            + ["setpriv", "--reuid=\(Self.name)", "--regid=\(Self.name)", "--clear-groups",
               "env", "-i", "HOME=\(home)", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "timeout", "900", binary] + args
    }

    func run(_ args: [String], stdin: String = "/dev/null", netns: String? = nil) throws -> CLIResult {
        let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
        let pid = try CLI.spawn(argv(args, netns: netns), stdin: stdin, stdout: out, stderr: err)
        return try CLI.Running(pid: pid, stdoutPath: out, stderrPath: err).wait(seconds: 960)
    }
}

/// Sets the user up once for the whole suite and removes it after.
struct NonRootUserTrait: SuiteTrait, TestScoping {
    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let user = try NonRootUser()
        defer { user.remove() }
        try await NonRootUser.$current.withValue(user) { try await function() }
    }
}

extension Trait where Self == NonRootUserTrait {
    static var nonRootUser: Self { Self() }
}

/// `boot`, `run` and snapshots as an ordinary user with `/dev/kvm` (issue:
/// the vCPU spun on `EAGAIN` for anyone but root).
@Suite(.serialized, .enabled(if: KVMGate.enabled && Images.present && getuid() == 0, KVMGate.skipMessage), .nonRootUser)
struct NonRootTests {
    var user: NonRootUser { NonRootUser.current! }

    @Test("boot to power-off as an ordinary user, with a --drive and a TAP the user owns (tap=), in a namespace the test makes")
    func bootDriveTap() throws {
        let ns = try NetNamespace()
        try #require(try NetNamespace.sh("ip netns exec \(ns.name) ip tuntap add dev t0 mode tap user \(NonRootUser.name)") == 0)
        let drive = user.home + "/data.img"
        try #require(try NetNamespace.sh("printf nonroot-drive > '\(drive)' && truncate -s 1M '\(drive)' && chown \(NonRootUser.name) '\(drive)'") == 0)
        let script = "mount -t sysfs sys /sys; echo drive=$(dd if=/dev/vdb bs=13 count=1 2>/dev/null); echo net=$(ls /sys/class/net | grep -c eth0); id -u"
        let r = try user.run(["boot", "--kernel", user.kernel, "--rootfs", "\(user.rootfs),ro", "--drive", drive,
                              "--net", "tap=t0", "--timeout", "600", "--append", "SWIFTLET_INIT_RUN=\"\(script)\""], netns: ns.name)
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout.contains("drive=nonroot-drive"), "stdout: \(r.stdout.suffix(2000))")
        #expect(r.stdout.contains("net=1"))
        #expect(r.stdout.contains("swiftlet-init: command exited with status 0"))
    }

    @Test("run as an ordinary user: its own cached snapshot is created, then restored; stdin, stdout and exit codes")
    func runSnapshotRestore() throws {
        let input = try CLI.tempFile("in")
        defer { unlink(input) }
        try #require(try NetNamespace.sh("printf 'from-stdin\\n' > '\(input)' && chmod 644 '\(input)'") == 0)
        let base = ["run", "--kernel", user.kernel, "--rootfs", user.rootfs, "--timings", "--"]
        var r = try user.run(base + ["sh", "-c", "cat; id -u; exit 3"], stdin: input)
        #expect(r.status == 3, "stderr: \(r.stderr)")
        #expect(r.stdout == "from-stdin\n0\n", "the job runs as the guest's root")
        #expect(r.stderr.contains("start=snapshot"), "the first run creates the snapshot, then restores it: \(r.stderr)")
        // The snapshot is the user's own, in its own cache.
        #expect(try NetNamespace.sh("test \"$(stat -c %U '\(user.home)/.cache/swiftlet/snapshots')\" = \(NonRootUser.name)") == 0)
        for (command, status) in [(["true"], Int32(0)), (["sh", "-c", "exit 42"], 42), (["sh", "-c", "kill -9 $$"], 137)] {
            r = try user.run(base + command)
            #expect(r.status == status, "\(command): stderr: \(r.stderr)")
            #expect(r.stderr.contains("start=snapshot"))
        }
    }

    @Test("an image converts without root: owners, a setuid bit, a device node, a hard link and an xattr come out as the tarball says")
    func imageWithoutRoot() throws {
        let tarball = user.home + "/../pub/image.tar.gz"
        // The tarball is made by root (the only way to get owners and a device node from a tree),
        // with Python's tarfile writing the metadata directly.
        let script = """
        import tarfile, io
        with tarfile.open('\(tarball)', 'w:gz', format=tarfile.PAX_FORMAT) as t:
            def add(name, kind=tarfile.REGTYPE, data=b'', **kw):
                ti = tarfile.TarInfo(name); ti.type = kind; ti.size = len(data)
                for k, v in kw.items(): setattr(ti, k, v)
                t.addfile(ti, io.BytesIO(data) if data else None)
            add('./etc', tarfile.DIRTYPE, mode=0o755)
            add('./etc/owned', data=b'x', uid=1234, gid=5678, mode=0o4750, pax_headers={'SCHILY.xattr.user.k': 'v'})
            add('./etc/hard', tarfile.LNKTYPE, linkname='./etc/owned')
            add('./dev', tarfile.DIRTYPE, mode=0o755)
            add('./dev/null', tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        """
        let generator = try CLI.writeFile(Array(script.utf8))
        defer { unlink(generator) }
        try #require(try NetNamespace.sh("python3 '\(generator)' && chmod 644 '\(tarball)'") == 0)
        let r = try user.run(["image", "prepare", tarball])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        let image = r.stdout.split(separator: "\n").first.map(String.init) ?? ""
        #expect(image.hasPrefix(user.home + "/.cache/swiftlet/images/"), "the user's own cache: \(image)")
        let owned = try debugfs(image, "stat /etc/owned")
        #expect(owned.contains("Mode:  04750") && owned.contains("User:  1234   Group:  5678"), "\(owned)")
        #expect(owned.contains("Links: 2"), "the hard link is one inode: \(owned)")
        let dev = try debugfs(image, "stat /dev/null")
        #expect(dev.contains("Type: character special") && dev.contains("Device major/minor number: 01:03"), "\(dev)")
        #expect(try debugfs(image, "ea_list /etc/owned").contains("user.k (1) = \"v\""))
    }

    /// debugfs's answer to one request about `image`.
    private func debugfs(_ image: String, _ request: String) throws -> String {
        let out = try CLI.tempFile("debugfs")
        defer { unlink(out) }
        _ = try NetNamespace.sh("debugfs -R '\(request)' '\(image)' > '\(out)' 2>/dev/null")
        return CLI.readText(out)
    }

    @Test("what needs privileges says so in one line: --net auto, a TAP of another user, a user without /dev/kvm")
    func missingPermissions() throws {
        let ns = try NetNamespace()
        var r = try user.run(["run", "--kernel", user.kernel, "--rootfs", user.rootfs, "--net", "auto", "--", "true"], netns: ns.name)
        #expect(r.status == 125)
        #expect(r.stderrLines.count == 1 && r.stderr.contains("needs CAP_NET_ADMIN"), "\(r.stderr)")
        #expect(ns.taps.isEmpty)

        try #require(try NetNamespace.sh("ip netns exec \(ns.name) ip tuntap add dev t1 mode tap user root") == 0)
        r = try user.run(["boot", "--kernel", user.kernel, "--rootfs", "\(user.rootfs),ro", "--net", "tap=t1", "--timeout", "30"], netns: ns.name)
        #expect(r.status == 1)
        #expect(r.stderrLines.count == 1 && r.stderr.contains("not owned by this user"), "\(r.stderr)")

        // Without the ACL on /dev/net/tun, tap= says which device to grant.
        try #require(try NetNamespace.sh("setfacl -x u:\(NonRootUser.name) /dev/net/tun") == 0)
        r = try user.run(["boot", "--kernel", user.kernel, "--rootfs", "\(user.rootfs),ro", "--net", "tap=t1", "--timeout", "30"], netns: ns.name)
        _ = try NetNamespace.sh("setfacl -m u:\(NonRootUser.name):rw /dev/net/tun")
        #expect(r.status == 1)
        #expect(r.stderrLines == ["swiftlet: error: net: permission denied on /dev/net/tun: grant this user access (setfacl -m u:USER:rw /dev/net/tun; most distributions ship it mode 0666)"])

        // Without the ACL on /dev/kvm: the line names both fixes.
        try #require(try NetNamespace.sh("setfacl -x u:\(NonRootUser.name) /dev/kvm") == 0)
        defer { _ = try? NetNamespace.sh("setfacl -m u:\(NonRootUser.name):rw /dev/kvm") }
        r = try user.run(["boot", "--kernel", user.kernel, "--rootfs", "\(user.rootfs),ro", "--timeout", "30"])
        #expect(r.status == 1)
        #expect(r.stderrLines == ["swiftlet: error: permission denied on /dev/kvm: add this user to its group (usermod -aG kvm USER) or grant it an ACL (setfacl -m u:USER:rw /dev/kvm)"])
    }
}
