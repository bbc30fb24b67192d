import Glibc
import SwiftletSys
import Testing
import SwiftletTestSupport

// `swiftlet run --image REF` and `swiftlet image prepare REF` on the images that
// Tests/images/build.sh builds (Tests/images/README.md says what each one holds).
// Most checks read the converted ext4 image with debugfs on the host; the VM runs
// (ImageTests.Run) check what only the guest can show. Each image costs one cold boot
// for its snapshot (about 40 s on a nested-KVM host); every later run restores it.

/// The test images: `$SWIFTLET_TEST_IMAGES` (`make test` exports it). Without them the
/// image tests skip, except under CI (`CI=true`, or `SWIFTLET_REQUIRE_KVM=1` as `.ci/run`
/// sets), where they fail.
enum TestImages {
    static var directory: String { getenv("SWIFTLET_TEST_IMAGES").map { String(cString: $0) } ?? "" }
    static var present: Bool { !directory.isEmpty && access(directory + "/BUILT", R_OK) == 0 }
    static var required: Bool { getenv("CI").map { String(cString: $0) == "true" } == true || KVMGate.required }
    static var enabled: Bool { present || required }
    static let skipMessage: Comment = "no test images: run Tests/images/build.sh and set SWIFTLET_TEST_IMAGES to the directory it prints (make test does); with CI=true this is a failure"

    /// The path of one of the images; fails the test when there are none.
    static func path(_ name: String) throws -> String {
        try #require(present, "SWIFTLET_TEST_IMAGES=\(directory): no complete image set there (run Tests/images/build.sh)")
        return directory + "/" + name
    }

    /// `oci:<dir>/oci:<tag>`.
    static func oci(_ tag: String? = "test", layout: String = "oci") throws -> String {
        "oci:" + (try path(layout)) + (tag.map { ":" + $0 } ?? "")
    }
}

/// The image cache the tests in this process share (a temp dir, removed at exit), so that a
/// conversion and its snapshot are made once. Tests that look at what a conversion leaves
/// behind use a fresh one of their own.
enum SharedImageCache {
    static let path: String = {
        let dir = (try? CLI.tempDirectory("imagecache")) ?? "/tmp/swiftlet-test-imagecache"
        atexit { removeTree(SharedImageCache.path) }
        return dir
    }()
}

/// `swiftlet` with `SWIFTLET_IMAGE_CACHE` set (and `environment`, `KEY=VALUE`), through env(1).
func swiftletWithImages(_ args: [String], cache: String = SharedImageCache.path, environment: [String] = [],
                        timeout: Int = 900) throws -> CLIResult {
    try runCommand(["env", "SWIFTLET_IMAGE_CACHE=\(cache)"] + environment + ["timeout", String(timeout), CLI.binary] + args)
}

/// Any program, its stdout and stderr captured, stdin from /dev/null.
func runCommand(_ argv: [String]) throws -> CLIResult {
    let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
    defer { unlink(out); unlink(err) }
    let pid = try CLI.spawn(argv, stdout: out, stderr: err)
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return CLIResult(status: CLI.exitCode(status), stdout: CLI.readText(out), stderr: CLI.readText(err))
}

/// `swiftlet image prepare REF`: the ext4 path it prints (one line), or a failed expectation.
func prepareImage(_ reference: String, cache: String = SharedImageCache.path, environment: [String] = []) throws -> Ext4Image {
    let r = try swiftletWithImages(["image", "prepare", reference], cache: cache, environment: environment)
    try #require(r.status == 0, "image prepare \(reference): status \(r.status), stderr: \(r.stderr)")
    let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    #expect(lines.count == 2 && lines[1].isEmpty, "image prepare prints one line; stdout: \(r.stdout)")
    let path = String(lines[0])
    try #require(path.hasPrefix("/") && access(path, R_OK) == 0, "image prepare printed \(path)")
    return Ext4Image(path: path)
}

/// Every path below `root` (relative), with its type, mode and size: to see what a command left.
func walkTree(_ root: String) -> [String: String] {
    var found: [String: String] = [:]
    func visit(_ relative: String) {
        let full = relative.isEmpty ? root : root + "/" + relative
        for name in listDirectory(full) {
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            guard lstat(full + "/" + name, &st) == 0 else { continue }
            found[rel] = "\(String(st.st_mode, radix: 8)) \(st.st_size)"
            if st.st_mode & S_IFMT == S_IFDIR { visit(rel) }
        }
    }
    visit("")
    return found
}

/// The host files an escaping tar entry of the bad images would write (`/tmp/swiftlet-escape*`).
func escapedFiles() -> [String] {
    listDirectory("/tmp").filter { $0.hasPrefix("swiftlet-escape") }.sorted()
}

/// An ext4 image read on the host with debugfs (e2fsprogs), without mounting it.
struct Ext4Image {
    let path: String

    /// One directory entry, from `debugfs -R 'ls -p DIR'`.
    struct Entry: Equatable, CustomStringConvertible {
        var inode: Int
        var mode: UInt32 // type and permission bits, as st_mode
        var uid: Int
        var gid: Int
        var description: String { "inode \(inode) mode \(String(mode, radix: 8)) owner \(uid):\(gid)" }
        var permissions: UInt32 { mode & 0o7777 }
        var type: UInt32 { mode & 0o170000 }
    }

    func debugfs(_ request: String) -> CLIResult {
        (try? runCommand(["debugfs", "-R", request, path])) ?? CLIResult(status: -1, stdout: "", stderr: "could not run debugfs")
    }

    /// The directory's entries by name (without . and ..), nil when it is missing.
    func list(_ directory: String) -> [String: Entry]? {
        let r = debugfs("ls -p \"\(directory)\"")
        guard r.status == 0, !r.stdout.isEmpty else { return nil }
        var entries: [String: Entry] = [:]
        for line in r.stdout.split(separator: "\n") {
            // /inode/mode/uid/gid/name/size/
            let f = line.split(separator: "/", omittingEmptySubsequences: false)
            guard f.count >= 7, let ino = Int(f[1]), let mode = UInt32(f[2], radix: 8), let uid = Int(f[3]), let gid = Int(f[4]) else { continue }
            let name = String(f[5])
            if name != "." && name != ".." { entries[name] = Entry(inode: ino, mode: mode, uid: uid, gid: gid) }
        }
        return entries
    }

    func names(_ directory: String) -> Set<String> {
        Set(list(directory)?.keys.map { $0 } ?? [])
    }

    /// The entry for `path`, nil when it is missing.
    func entry(_ path: String) -> Entry? {
        let slash = path.lastIndex(of: "/")!
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        return list(dir)?[String(path[path.index(after: slash)...])]
    }

    /// `debugfs stat`'s text: links, device numbers, a fast symlink's target, xattrs.
    func stat(_ path: String) -> String {
        debugfs("stat \"\(path)\"").stdout
    }

    /// A file's contents (`debugfs cat`).
    func cat(_ path: String) -> String {
        debugfs("cat \"\(path)\"").stdout
    }

    /// The SHA-256 of a file's contents, dumped to a temp file.
    func sha256Of(_ path: String) throws -> String {
        let out = try CLI.tempFile("dump")
        defer { unlink(out) }
        unlink(out)
        _ = debugfs("dump \"\(path)\" \(out)")
        return try sha256(out)
    }
}

/// What the `test` image (oci/ and docker.tar) must hold after its four layers: the whiteout
/// and the opaque directory applied, owners, modes, links, device nodes and xattrs kept.
func expectTestImageTree(_ image: Ext4Image) throws {
    let root = image.names("/")
    #expect(root.isSuperset(of: ["bin", "data", "dev", "etc", "home", "olddir", "usr"]), "/: \(root.sorted())")
    let data = try #require(image.list("/data"), "no /data")
    #expect(Set(data.keys) == ["abslink", "big", "empty", "emptydir", "fifo", "hard", "keep", "link", "long", "new", "sgid",
                               "sticky", "suid", "testblock", "testnull", "xattr", "ünïcödé.txt"],
            "/data: \(data.keys.sorted()) (data/gone must be gone, data/new there, no .wh. files)")
    #expect(image.names("/olddir") == ["c"], "/olddir replaced by layer 4 (opaque): \(image.names("/olddir").sorted())")
    #expect(image.cat("/olddir/c") == "c\n")
    #expect(image.cat("/data/new") == "new\n")
    for dir in ["/", "/data", "/olddir", "/dev", "/etc"] {
        let whiteouts = image.names(dir).filter { $0.hasPrefix(".wh.") }
        #expect(whiteouts.isEmpty, "whiteout files left in \(dir): \(whiteouts)")
    }

    // Owners and modes.
    let keep = try #require(data["keep"])
    #expect(keep.type == 0o100000 && keep.permissions == 0o640 && keep.uid == 1000 && keep.gid == 1000, "/data/keep: \(keep)")
    #expect(image.cat("/data/keep") == "keep\n")
    #expect(data["suid"]?.mode == 0o104755 && data["suid"]?.uid == 0, "/data/suid: \(String(describing: data["suid"]))")
    #expect(data["sgid"]?.mode == 0o042775 && data["sgid"]?.gid == 1000, "/data/sgid: \(String(describing: data["sgid"]))")
    #expect(data["sticky"]?.mode == 0o041777, "/data/sticky: \(String(describing: data["sticky"]))")
    #expect(data["empty"]?.type == 0o100000 && data["emptydir"]?.type == 0o040000)
    let home = image.entry("/home/alice")
    #expect(home?.mode == 0o040700 && home?.uid == 1000 && home?.gid == 1000, "/home/alice: \(String(describing: home))")
    let busybox = image.entry("/bin/busybox")
    #expect(busybox?.mode == 0o100755 && busybox?.uid == 0, "/bin/busybox: \(String(describing: busybox))")
    #expect(image.entry("/usr/bin/probe")?.mode == 0o100755)

    // A hard link pair: one inode, two links.
    let hard = try #require(data["hard"])
    #expect(hard.inode == keep.inode, "/data/hard \(hard) and /data/keep \(keep) are not one inode")
    #expect(image.stat("/data/keep").contains("Links: 2"))

    // Symlinks, relative and absolute, as written.
    #expect(data["link"]?.type == 0o120000 && data["abslink"]?.type == 0o120000)
    #expect(image.stat("/data/link").contains("Fast link dest: \"keep\""), "\(image.stat("/data/link"))")
    #expect(image.stat("/data/abslink").contains("Fast link dest: \"/data/keep\""))
    let sh = image.stat("/bin/sh")
    #expect(sh.contains("Type: symlink") && sh.contains("Fast link dest: \"busybox\""), "/bin/sh: \(sh)")

    // Device nodes and a FIFO.
    #expect(data["testnull"]?.mode == 0o020620, "/data/testnull: \(String(describing: data["testnull"]))")
    #expect(image.stat("/data/testnull").contains("Device major/minor number: 01:03"), "\(image.stat("/data/testnull"))")
    #expect(image.entry("/dev/testnull")?.mode == 0o020666)
    #expect(image.stat("/dev/testnull").contains("Device major/minor number: 01:03"))
    #expect(data["testblock"]?.mode == 0o060640)
    #expect(image.stat("/data/testblock").contains("Device major/minor number: 07:00"))
    #expect(data["fifo"]?.mode == 0o010600)

    // The xattr.
    let xattr = image.stat("/data/xattr")
    #expect(xattr.contains("user.swiftlet (5) = \"hello\""), "/data/xattr: \(xattr)")

    // Names that need PAX headers, and 3 MiB of content byte for byte.
    #expect(image.cat("/data/ünïcödé.txt") == "utf8\n")
    let long = image.names("/data/long")
    #expect(long == [String(repeating: "l", count: 200)], "/data/long: \(long)")
    let bigSHA = CLI.readText(try TestImages.path("big.sha256")).filter { !$0.isWhitespace }
    let bigActual = try image.sha256Of("/data/big")
    #expect(bigSHA.count == 64 && bigActual.hasPrefix(bigSHA), "/data/big: sha256 \(bigActual), expected \(bigSHA)")
    #expect(image.cat("/etc/passwd").contains("alice:x:1000:1000:"))
}

/// The small busybox tree of rootfs.tar*, rootdir/ and rootfs.ext4; /hello.txt says where it came from.
func expectSmallTree(_ image: Ext4Image, hello: String) throws {
    #expect(image.cat("/hello.txt") == hello + "\n", "/hello.txt: \(image.cat("/hello.txt"))")
    let secret = image.entry("/home/alice/secret")
    #expect(secret?.mode == 0o100600 && secret?.uid == 1000 && secret?.gid == 1000, "/home/alice/secret: \(String(describing: secret))")
    let home = image.entry("/home/alice")
    #expect(home?.mode == 0o040700 && home?.uid == 1000, "/home/alice: \(String(describing: home))")
    #expect(image.entry("/bin/busybox")?.mode == 0o100755)
    #expect(image.stat("/hello-link").contains("Fast link dest: \"hello.txt\""))
    #expect(image.stat("/bin/sh").contains("Fast link dest: \"busybox\""))
    #expect(image.entry("/usr/bin/probe")?.mode == 0o100755)
}

/// The `--image` tests, one at a time (`swift test --filter SwiftletCLITests.ImageTests`).
@Suite(.serialized)
enum ImageTests {}

/// `swiftlet image prepare`: conversions checked on the host, no VM.
extension ImageTests {
    @Suite(.enabled(if: TestImages.enabled, TestImages.skipMessage))
    struct Prepare {
        @Test("oci:DIR:TAG: four layers applied (a whiteout, an opaque directory), owners, modes, hard and symbolic links, device nodes, xattrs, long and UTF-8 names; staged inside the cache only; a second prepare finds it")
        func ociLayout() throws {
            let cache = try CLI.tempDirectory("imgcache"), tmp = try CLI.tempDirectory("tmpdir")
            defer { removeTree(cache); removeTree(tmp) }
            let image = try prepareImage(try TestImages.oci("test"), cache: cache, environment: ["TMPDIR=\(tmp)"])
            try expectTestImageTree(image)
            #expect(image.path.hasPrefix(cache + "/"), "the ext4 image \(image.path) is not in the image cache \(cache)")
            #expect(listDirectory(tmp).isEmpty, "left in TMPDIR: \(listDirectory(tmp))")
            let staging = walkTree(cache).keys.filter { $0.split(separator: "/").contains { $0.hasPrefix(".tmp") } }
            #expect(staging.isEmpty, "staging left in the cache: \(staging.sorted())")
            // Found in the cache: the same path, and the image is not rewritten.
            let before = try sha256(image.path)
            let again = try prepareImage(try TestImages.oci("test"), cache: cache, environment: ["TMPDIR=\(tmp)"])
            #expect(again.path == image.path)
            #expect(try sha256(image.path) == before)
        }

        @Test("oci:DIR without a tag: the `latest` tag (the same manifest as `test`)")
        func ociDefaultTag() throws {
            let image = try prepareImage(try TestImages.oci(nil))
            #expect(image.names("/olddir") == ["c"])
            #expect(image.entry("/data/keep")?.uid == 1000)
        }

        @Test("a docker save archive: the same tree as the OCI layout")
        func dockerArchive() throws {
            try expectTestImageTree(try prepareImage(try TestImages.path("docker.tar")))
        }

        @Test("rootfs tarballs, plain, gzip and zstd: files, owners, modes, symlinks", arguments: ["rootfs.tar", "rootfs.tar.gz", "rootfs.tar.zst"])
        func tarball(name: String) throws {
            try expectSmallTree(try prepareImage(try TestImages.path(name)), hello: "from-tarball")
        }

        @Test("a directory: files, owners, modes, symlinks")
        func directory() throws {
            let source = try TestImages.path("rootdir")
            let before = walkTree(source)
            try expectSmallTree(try prepareImage(source), hello: "from-rootdir")
            #expect(walkTree(source) == before, "the directory changed")
        }

        @Test("an ext4 image: prepared as it is")
        func ext4() throws {
            let source = try TestImages.path("rootfs.ext4")
            let before = try sha256(source)
            try expectSmallTree(try prepareImage(source), hello: "from-ext4")
            #expect(try sha256(source) == before, "the ext4 image changed")
        }

        @Test("the Debian root (mmdebstrap): merged /usr, python3, nobody in /etc/passwd")
        func debian() throws {
            let image = try prepareImage(try TestImages.path("debian.tar"))
            #expect(image.stat("/bin").contains("Fast link dest: \"usr/bin\""), "/bin: \(image.stat("/bin"))")
            #expect(image.entry("/usr/bin/python3.11")?.mode == 0o100755)
            #expect(image.cat("/etc/passwd").contains(":65534:65534:nobody:"))
            // Debian's setuid programs keep their bit.
            #expect(image.entry("/usr/bin/su")?.mode == 0o104755, "/usr/bin/su: \(String(describing: image.entry("/usr/bin/su")))")
        }

        /// Each bad image with words, one of which the error should contain (case-insensitive).
        static let badImages: [(String, [String])] = [
            ("bad-digest", ["digest"]),
            ("bad-config-digest", ["digest"]),
            ("bad-dotdot", [".."]),
            ("bad-absolute", ["absolute", "swiftlet-escape-abs"]),
            ("bad-symlink", ["evil"]),
            ("bad-symlink-relative", ["evil"]),
            ("bad-symlink-layers", ["evil"]),
            ("bad-hardlink", ["stolen", "hostname", "link"]),
            ("bad-truncated", ["truncated", "size", "short", "end of", "unexpected"]),
            ("bad-no-manifest", ["manifest", "missing", "not found", "no such"]),
            ("bad-arch", ["arm64"]),
        ]

        @Test("bad images: one `swiftlet: error:` line, exit 125 from run, nothing staged left in the cache, nothing written outside it",
              arguments: badImages)
        func badImage(name: String, words: [String]) throws {
            let layout = try TestImages.path(name)
            let cache = try CLI.tempDirectory("imgcache"), tmp = try CLI.tempDirectory("tmpdir")
            defer { removeTree(cache); removeTree(tmp) }
            for f in escapedFiles() { removeTree("/tmp/" + f) }
            var hostname = stat()
            lstat("/etc/hostname", &hostname)
            let layoutBefore = walkTree(layout)

            func expectRejected(_ r: CLIResult, _ what: String) {
                #expect(r.stdout.isEmpty, "\(what): stdout: \(r.stdout)")
                #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: ") && r.stderr.hasSuffix("\n"),
                        "\(what): stderr: \(r.stderr)")
                let lower = r.stderr.lowercased()
                #expect(words.contains { lower.contains($0.lowercased()) }, "\(what): the error names none of \(words): \(r.stderr)")
                #expect(!lower.contains("/dev/kvm"), "\(what): \(r.stderr)")
            }
            func expectNothingLeft(_ what: String) {
                #expect(listDirectory(tmp).isEmpty, "\(what): left in TMPDIR: \(listDirectory(tmp))")
                #expect(escapedFiles().isEmpty, "\(what): written outside the image: /tmp/\(escapedFiles())")
                // Directories and lock files may stay; no staging directory (`.tmp*`), no other file.
                let left = walkTree(cache).filter { path, kind in
                    path.split(separator: "/").contains { $0.hasPrefix(".tmp") } || !kind.hasPrefix("40") && !path.hasSuffix(".lock")
                }
                #expect(left.isEmpty, "\(what): left in the image cache: \(left.keys.sorted())")
                var now = stat()
                lstat("/etc/hostname", &now)
                #expect(now.st_nlink == hostname.st_nlink, "\(what): /etc/hostname has \(now.st_nlink) links, had \(hostname.st_nlink)")
                #expect(walkTree(layout) == layoutBefore, "\(what): the image's directory changed")
            }

            let prepared = try swiftletWithImages(["image", "prepare", "oci:\(layout):test"], cache: cache, environment: ["TMPDIR=\(tmp)"], timeout: 300)
            #expect(prepared.status != 0, "image prepare \(name) succeeded: \(prepared.stdout)")
            expectRejected(prepared, "image prepare")
            expectNothingLeft("image prepare")

            // run refuses it before anything boots (but needs a usable /dev/kvm to get that far, perhaps).
            guard KVMGate.enabled else { return }
            let r = try swiftletWithImages(["run", "--image", "oci:\(layout):test", "--", "true"], cache: cache, environment: ["TMPDIR=\(tmp)"], timeout: 300)
            #expect(r.status == 125, "run --image \(name): status \(r.status), stderr: \(r.stderr)")
            expectRejected(r, "run")
            expectNothingLeft("run")
        }
    }
}

/// `swiftlet run --image`: real guests. One cold boot per image (oci:test, oci:test-cmd,
/// debian.tar, rootfs.tar.gz) makes its snapshot; every other run restores one.
extension ImageTests {
    @Suite(.enabled(if: KVMGate.enabled && TestImages.enabled, KVMGate.skipMessage))
    struct Run {
        static func timingsLine(_ stderr: String) -> String {
            stderr.split(separator: "\n").last { $0.contains("swiftlet-timings:") }.map(String.init) ?? "(no timings line)"
        }

        /// `key=value` lines of a guest script's output.
        static func fields(_ stdout: String) -> [String: String] {
            var d: [String: String] = [:]
            for line in stdout.split(separator: "\n") {
                guard let eq = line.firstIndex(of: "=") else { continue }
                d[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
            return d
        }

        @Test("oci:DIR:test in a guest: the layers' result, owners, modes, links, the device node, the xattr, /proc /sys /dev /tmp mounted, Env and WorkingDir; --user, --env, --workdir override; the second run restores the image's snapshot; the cached image is not modified")
        func ociRun() throws {
            try RunTests.requireImages()
            let ref = try TestImages.oci("test")
            let ext4 = try prepareImage(ref)
            let ext4Before = try sha256(ext4.path)
            let script = """
                echo "cwd=$(pwd)"; echo "greeting=$GREETING"; echo "path=$PATH"; echo "ids=$(id -u) $(id -g)"
                names() { cd "$1" && for f in * .*; do case "$f" in .|..) ;; *) printf '%s ' "$f" ;; esac; done; }
                echo "data=$(names /data)"; echo "olddir=$(names /olddir)"
                echo "new=$(cat /data/new)"; echo "gone=$(test -e /data/gone && echo present || echo absent)"
                echo "keep=$(stat -c '%a %u %g %h' /data/keep) $(cat /data/keep)"
                echo "samefile=$(test "$(stat -c %i /data/keep)" = "$(stat -c %i /data/hard)" && echo yes || echo no)"
                echo "link=$(readlink /data/link) $(cat /data/link)"; echo "abslink=$(readlink /data/abslink) $(cat /data/abslink)"
                echo "suid=$(stat -c %a /data/suid)"; echo "sgid=$(stat -c '%a %g' /data/sgid)"
                echo "testnull=$(stat -c '%F %t:%T %a' /data/testnull)"
                echo "xattr=$(probe getxattr /data/xattr user.swiftlet)"
                echo "mounts=$(cut -d ' ' -f 2 /proc/mounts | tr '\\n' ' ')"
                echo "devnull=$(test -c /dev/null && echo ok)"; echo "sys=$(test -d /sys/kernel && echo ok)"
                echo "tmp=$(echo t > /tmp/t && cat /tmp/t)"
                echo "agent=$(test -e /sbin/swiftlet-agent && echo visible || echo hidden)"
                echo "root=$(ls / | tr '\\n' ' ')"
                echo written > /data/written && sync && echo "write=ok"
                """
            let first = try swiftletWithImages(["run", "--image", ref, "--timings", "--", "sh", "-c", script])
            #expect(first.status == 0, "stderr: \(first.stderr)")
            let f = Self.fields(first.stdout)
            #expect(f["cwd"] == "/data", "stdout: \(first.stdout)")
            #expect(f["greeting"] == "hello-from-image")
            #expect(f["path"] == "/usr/bin:/bin")
            #expect(f["ids"] == "0 0")
            #expect(Set((f["data"] ?? "").split(separator: " ").map(String.init)) ==
                    ["abslink", "big", "empty", "emptydir", "fifo", "hard", "keep", "link", "long", "new", "sgid", "sticky", "suid",
                     "testblock", "testnull", "xattr", "ünïcödé.txt"], "data=\(f["data"] ?? "")")
            #expect(f["olddir"] == "c ")
            #expect(f["new"] == "new")
            #expect(f["gone"] == "absent")
            #expect(f["keep"] == "640 1000 1000 2 keep")
            #expect(f["samefile"] == "yes")
            #expect(f["link"] == "keep keep")
            #expect(f["abslink"] == "/data/keep keep")
            #expect(f["suid"] == "4755")
            #expect(f["sgid"] == "2775 1000")
            #expect(f["testnull"] == "character special file 1:3 620")
            #expect(f["xattr"] == "hello")
            let mounts = Set((f["mounts"] ?? "").split(separator: " ").map(String.init))
            #expect(mounts.isSuperset(of: ["/", "/proc", "/sys", "/dev", "/tmp"]), "mounts: \(f["mounts"] ?? "")")
            #expect(f["devnull"] == "ok" && f["sys"] == "ok" && f["tmp"] == "t")
            #expect(f["agent"] == "hidden", "the job sees Swiftlet's agent, not the image's own /")
            let root = Set((f["root"] ?? "").split(separator: " ").map(String.init))
            #expect(root.isSuperset(of: ["bin", "data", "dev", "etc", "home", "olddir", "usr", "proc", "sys", "tmp"]), "/: \(f["root"] ?? "")")
            #expect(f["write"] == "ok")

            // Overrides; the image's snapshot restored; the first run's write is not there.
            let second = try swiftletWithImages(["run", "--image", ref, "--timings", "--user", "alice", "--env", "GREETING=overridden",
                                                 "--workdir", "/tmp", "--", "sh", "-c",
                                                 "id -u; id -g; echo $GREETING; echo $PATH; pwd; probe xattrs /data/xattr; test -e /data/written && echo persisted || echo fresh; cat /data/keep"])
            #expect(second.status == 0, "stderr: \(second.stderr)")
            #expect(second.stdout == "1000\n1000\noverridden\n/usr/bin:/bin\n/tmp\nuser.swiftlet=hello\nfresh\nkeep\n", "stdout: \(second.stdout)")
            #expect(second.stderr.contains("start=snapshot"), "second run: \(Self.timingsLine(second.stderr))")

            // --user as uid and uid:gid.
            let numeric = try swiftletWithImages(["run", "--image", ref, "--user", "1000", "--", "sh", "-c", "id -u; id -g"])
            #expect(numeric.status == 0 && numeric.stdout == "1000\n1000\n", "--user 1000: \(numeric.stdout) \(numeric.stderr)")
            let pair = try swiftletWithImages(["run", "--image", ref, "--user", "65534:1000", "--", "sh", "-c", "id -u; id -g"])
            #expect(pair.status == 0 && pair.stdout == "65534\n1000\n", "--user 65534:1000: \(pair.stdout) \(pair.stderr)")

            // oci:DIR with no tag is `latest`: the same manifest, so the same snapshot.
            let latest = try swiftletWithImages(["run", "--image", try TestImages.oci(nil), "--timings", "--", "cat", "/olddir/c"])
            #expect(latest.status == 0 && latest.stdout == "c\n", "stderr: \(latest.stderr)")
            #expect(latest.stderr.contains("start=snapshot"), "oci:DIR (latest): \(Self.timingsLine(latest.stderr))")

            #expect(try sha256(ext4.path) == ext4Before, "the cached ext4 image was modified by a run")
        }

        @Test("Entrypoint and Cmd run when no command is given, as the image's User in its WorkingDir; --user, --env and --workdir still apply")
        func entrypointAndCmd() throws {
            try RunTests.requireImages()
            let ref = try TestImages.oci("test-cmd")
            let first = try swiftletWithImages(["run", "--image", ref, "--timings"])
            #expect(first.status == 0, "stderr: \(first.stderr)")
            #expect(first.stdout == "cmd-ran uid=1000 gid=1000 cwd=/data greeting=hello-from-image\n", "stdout: \(first.stdout)")
            let second = try swiftletWithImages(["run", "--image", ref, "--timings", "--user", "root", "--env", "GREETING=over", "--workdir", "/tmp"])
            #expect(second.status == 0, "stderr: \(second.stderr)")
            #expect(second.stdout == "cmd-ran uid=0 gid=0 cwd=/tmp greeting=over\n", "stdout: \(second.stdout)")
            #expect(second.stderr.contains("start=snapshot"), "second run: \(Self.timingsLine(second.stderr))")
        }

        @Test("a real distribution: debian.tar runs python3 -c 'print(6*7)'; --user nobody runs as 65534")
        func debian() throws {
            try RunTests.requireImages()
            let ref = try TestImages.path("debian.tar")
            let r = try swiftletWithImages(["run", "--image", ref, "--timings", "--", "python3", "-c", "print(6*7)"])
            #expect(r.status == 0, "stderr: \(r.stderr)")
            #expect(r.stdout == "42\n", "stdout: \(r.stdout)")
            let nobody = try swiftletWithImages(["run", "--image", ref, "--timings", "--user", "nobody", "--", "sh", "-c", "id -u; id -g"])
            #expect(nobody.status == 0, "stderr: \(nobody.stderr)")
            #expect(nobody.stdout == "65534\n65534\n", "stdout: \(nobody.stdout)")
            #expect(nobody.stderr.contains("start=snapshot"), "second run: \(Self.timingsLine(nobody.stderr))")
            let status = try swiftletWithImages(["run", "--image", ref, "--", "python3", "-c", "import sys; sys.exit(7)"])
            #expect(status.status == 7, "the command's exit status: \(status.status), stderr: \(status.stderr)")
        }

        @Test("bad references: a missing file, an unknown tag, an unknown user, no command and no Cmd: one line, exit 125",
              arguments: [
                (["--image", "/nonexistent/image.tar", "--", "true"], "/nonexistent/image.tar"),
                (["--image", "oci:TEST:no-such-tag", "--", "true"], "no-such-tag"),
                (["--image", "oci:TEST:test", "--user", "mallory", "--", "true"], "mallory"),
                (["--image", "oci:TEST:test"], "command"),
              ] as [([String], String)])
        func badReferences(args: [String], mentions: String) throws {
            let layout = try TestImages.path("oci")
            let r = try swiftletWithImages(["run"] + args.map { $0.hasPrefix("oci:TEST:") ? "oci:" + layout + $0.dropFirst(8) : $0 }, timeout: 300)
            #expect(r.status == 125, "\(args): status \(r.status), stderr: \(r.stderr)")
            #expect(r.stdout.isEmpty)
            #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: "), "\(args): stderr: \(r.stderr)")
            #expect(r.stderr.contains(mentions), "\(args): stderr: \(r.stderr)")
        }
    }
}
