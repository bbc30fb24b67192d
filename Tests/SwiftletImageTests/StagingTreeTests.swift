import Glibc
import SwiftletSys
import SwiftletX86
import Testing
@testable import SwiftletImage

/// A scratch directory, removed at the end of the test.
final class Scratch {
    let path: String
    init() {
        var template = Array("/tmp/swiftlet-image-test.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { b in b.baseAddress.flatMap { mkdtemp($0) }.map { String(cString: $0) } ?? "/nonexistent" }
    }
    deinit { removeTree(path) }

    func exists(_ rel: String) -> Bool {
        var st = stat()
        return lstat(path + "/" + rel, &st) == 0
    }

    func write(_ rel: String, _ bytes: [UInt8]) {
        let f = fopen(path + "/" + rel, "w")
        _ = fwrite(bytes, 1, bytes.count, f)
        fclose(f)
    }
}

/// Applies `layers` (tar archives) to a fresh staging tree, as image layers.
func stage(_ layers: [[UInt8]], in scratch: Scratch, whiteouts: Bool = true) throws(ImageError) -> StagingTree {
    let tree = try StagingTree(path: scratch.path + "/tree", maxBytes: 1 << 30)
    for (i, layer) in layers.enumerated() {
        try applyLayer(BufferSource(layer), to: tree, layer: "layer \(i)", whiteouts: whiteouts)
    }
    return tree
}

func tar(_ build: (inout TarBuilder) -> Void) -> [UInt8] {
    var b = TarBuilder()
    build(&b)
    b.end()
    return b.bytes
}

@Suite struct StagingTreeTests {
    @Test("layers in order: a whiteout deletes, an opaque whiteout empties a directory of the lower layers only")
    func whiteouts() throws {
        let scratch = Scratch()
        let lower = tar { t in
            t.add(TarBuilder.header("a/", type: "5", mode: 0o755))
            t.file("a/x", Array("x".utf8))
            t.file("a/y", Array("y".utf8))
            t.add(TarBuilder.header("d/", type: "5", mode: 0o700, uid: 7, gid: 8))
            t.file("d/old", Array("old".utf8))
            t.add(TarBuilder.header("d/sub/", type: "5"))
            t.file("d/sub/deep", [1])
        }
        let upper = tar { t in
            t.file("a/.wh.x", [])
            t.file("d/.wh..wh..opq", [])
            t.file("d/new", Array("new".utf8))
        }
        let tree = try stage([lower, upper], in: scratch)
        #expect(!scratch.exists("tree/a/x") && !tree.contains("a/x"))
        #expect(scratch.exists("tree/a/y"))
        #expect(!scratch.exists("tree/d/old") && !scratch.exists("tree/d/sub") && !tree.contains("d/sub/deep"))
        #expect(scratch.exists("tree/d/new"))
        #expect(!scratch.exists("tree/a/.wh.x") && !scratch.exists("tree/d/.wh..wh..opq"), "whiteouts are not materialized")
        #expect(tree.entries["d"]?.mode == 0o700 && tree.entries["d"]?.uid == 7, "the directory's own metadata stays")
    }

    @Test("without whiteout semantics (a plain tarball), .wh. files are files")
    func plainTarball() throws {
        let scratch = Scratch()
        let tree = try stage([tar { t in t.file("a/.wh.x", [1]) }], in: scratch, whiteouts: false)
        #expect(tree.contains("a/.wh.x") && scratch.exists("tree/a/.wh.x"))
    }

    @Test("an entry replaces what is there: a file a directory, a directory a file; a directory entry keeps contents")
    func replacement() throws {
        let scratch = Scratch()
        let lower = tar { t in
            t.file("p/f", [1])
            t.file("q", [2])
            t.file("keep/x", [3])
        }
        let upper = tar { t in
            t.file("p", [9])
            t.add(TarBuilder.header("q/", type: "5"))
            t.file("q/inside", [4])
            t.add(TarBuilder.header("keep/", type: "5", mode: 0o711))
        }
        let tree = try stage([lower, upper], in: scratch)
        #expect(tree.entries["p"]?.kind == .file && !tree.contains("p/f"))
        #expect(tree.entries["q"]?.kind == .directory && scratch.exists("tree/q/inside"))
        #expect(scratch.exists("tree/keep/x") && tree.entries["keep"]?.mode == 0o711)
    }

    @Test("nothing lands outside the tree: absolute paths, '..', a write through any symbolic link, a hard link out")
    func hostileEntries() throws {
        let scratch = Scratch()
        let outside = scratch.path + "/outside"
        #expect(mkdir(outside, 0o755) == 0)
        let cases: [(String, [UInt8])] = [
            ("absolute", tar { t in t.file("/abs-file", [1]) }),
            ("dotdot", tar { t in t.file("a/../../escape", [1]) }),
            ("dotdot-link", tar { t in t.add(TarBuilder.header("h", type: "1", link: "../outside/x")) }),
            ("symlink-out", tar { t in
                t.add(TarBuilder.header("evil", type: "2", link: outside))
                t.file("evil/pwned", [1])
            }),
            ("symlink-in", tar { t in
                t.add(TarBuilder.header("dir/", type: "5"))
                t.add(TarBuilder.header("alias", type: "2", link: "dir"))
                t.file("alias/through", [1])
            }),
            ("hardlink-missing", tar { t in t.add(TarBuilder.header("h", type: "1", link: "nothing")) }),
            ("hardlink-dir", tar { t in
                t.add(TarBuilder.header("dir/", type: "5"))
                t.add(TarBuilder.header("h", type: "1", link: "dir"))
            }),
        ]
        for (name, archive) in cases {
            let s = Scratch()
            #expect(throws: ImageError.self, "\(name)") { _ = try stage([archive], in: s) }
            do { _ = try stage([archive], in: Scratch()) } catch {
                if case .unsafeEntry = error {} else { Issue.record("\(name): \(error)") }
            }
        }
        #expect(listDirectory(outside).isEmpty, "nothing was written through the link")
    }

    @Test("a symbolic link may point anywhere: it is stored, never followed")
    func symlinkTargets() throws {
        let scratch = Scratch()
        let tree = try stage([tar { t in
            t.add(TarBuilder.header("etc/", type: "5"))
            t.add(TarBuilder.header("etc/abs", type: "2", link: "/etc/shadow"))
            t.add(TarBuilder.header("etc/up", type: "2", link: "../../../../host"))
        }], in: scratch)
        #expect(tree.entries["etc/abs"]?.kind == .symlink && tree.entries["etc/up"]?.kind == .symlink)
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink(scratch.path + "/tree/etc/abs", &buf, 255)
        #expect(n > 0 && String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "/etc/shadow")
    }

    @Test("hard links share the target's metadata; devices and FIFOs are placeholders with their numbers kept")
    func linksAndNodes() throws {
        let scratch = Scratch()
        let tree = try stage([tar { t in
            t.add(TarBuilder.header("f", size: 1, mode: 0o4755, uid: 5, gid: 6), data: [7])
            t.add(TarBuilder.header("g", type: "1", link: "./f"))
            t.add(TarBuilder.header("dev/", type: "5"))
            t.add(TarBuilder.header("dev/null", type: "3", mode: 0o666, major: 1, minor: 3))
            t.add(TarBuilder.header("dev/sda", type: "4", mode: 0o660, major: 8, minor: 0))
            t.add(TarBuilder.header("fifo", type: "6", mode: 0o600))
        }], in: scratch)
        #expect(tree.entries["g"] == tree.entries["f"])
        var a = stat(), b = stat()
        #expect(stat(scratch.path + "/tree/f", &a) == 0 && stat(scratch.path + "/tree/g", &b) == 0 && a.st_ino == b.st_ino)
        #expect(tree.entries["dev/null"]?.kind == .characterDevice(major: 1, minor: 3))
        #expect(tree.entries["dev/sda"]?.kind == .blockDevice(major: 8, minor: 0))
        #expect(tree.entries["fifo"]?.kind == .fifo)
        let script = try Ext4Writer.debugfsScript(tree, workDirectory: scratch.path)
        #expect(script.contains("cd \"/dev\"\nmknod \"null\" c 1 3\n"))
        #expect(script.contains("sif \"/f\" mode 0104755\nsif \"/f\" uid 5\nsif \"/f\" gid 6\n"))
        #expect(script.contains("mknod \"fifo\" p\n"))
    }

    @Test("names debugfs cannot take are refused; quotes are doubled")
    func debugfsNames() throws {
        #expect(Ext4Writer.quote("/a\"b") == "\"/a\"\"b\"")
        let scratch = Scratch()
        #expect(throws: ImageError.self) { _ = try stage([tar { t in t.file("line\nbreak", [1]) }], in: scratch) }
    }

    @Test("an image that unpacks to more than the limit is refused")
    func sizeLimit() throws {
        let scratch = Scratch()
        let tree = try StagingTree(path: scratch.path + "/tree", maxBytes: 8192)
        let archive = tar { t in t.file("big", [UInt8](repeating: 1, count: 20000)) }
        #expect(throws: ImageError.self) { try applyLayer(BufferSource(archive), to: tree, layer: "l", whiteouts: false) }
    }
}

@Suite struct ImageMetadataTests {
    @Test("the cache record round-trips any value")
    func recordRoundTrip() throws {
        var config = ImageConfig()
        config.environment = ["A=1", "NL=x\ny", "PCT=%0A%25"]
        config.workingDirectory = "/w d"
        config.user = "alice:staff"
        config.entrypoint = ["/bin/sh", "-c"]
        config.command = ["echo hi", ""]
        let record = ImageRecord(digest: "oci-abc", config: config, warmUp: ["/bin/sh"])
        #expect(try ImageRecord.decode(record.encoded()) == record)
        #expect(throws: ImageError.self) { _ = try ImageRecord.decode(Array("something else\n".utf8)) }
    }

    @Test("users: names, numbers, groups, supplementary groups and HOME, as Docker resolves them")
    func users() throws {
        let db = UserDatabase(passwd: Array("""
            root:x:0:0:root:/root:/bin/sh
            # a comment
            nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
            alice:x:1000:1000::/home/alice:/bin/sh
            broken line
            """.utf8), group: Array("""
            root:x:0:
            staff:x:50:alice,bob
            users:x:100:alice
            alice:x:1000:
            """.utf8))
        #expect(try db.resolve("") == .init(uid: 0, gid: 0, groups: [], home: "/root"))
        #expect(try db.resolve("nobody") == .init(uid: 65534, gid: 65534, groups: [], home: "/nonexistent"))
        #expect(try db.resolve("alice") == .init(uid: 1000, gid: 1000, groups: [50, 100], home: "/home/alice"))
        #expect(try db.resolve("1000") == .init(uid: 1000, gid: 1000, groups: [50, 100], home: "/home/alice"))
        #expect(try db.resolve("4242") == .init(uid: 4242, gid: 0, groups: [], home: "/"))
        #expect(try db.resolve("alice:staff") == .init(uid: 1000, gid: 50, groups: [], home: "/home/alice"))
        #expect(try db.resolve("4242:77") == .init(uid: 4242, gid: 77, groups: [], home: "/"))
        #expect(throws: ImageError.unknownUser("mallory")) { _ = try db.resolve("mallory") }
        #expect(throws: ImageError.unknownGroup("wheel")) { _ = try db.resolve("alice:wheel") }
    }

    @Test("configuration: the fields a run uses, type errors and the platform")
    func config() throws {
        let c = try ImageConfig.parse(Array("""
            {"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","A=b=c"],"WorkingDir":"/srv","User":"1:2",
             "Entrypoint":["/e"],"Cmd":["x","y"],"Labels":{"ignored":"yes"}},"rootfs":{"type":"layers","diff_ids":["sha256:00"]}}
            """.utf8), what: "config")
        #expect(c.environment == ["PATH=/bin", "A=b=c"] && c.workingDirectory == "/srv" && c.user == "1:2")
        #expect(c.defaultCommand == ["/e", "x", "y"] && c.diffIDs == ["sha256:00"])
        try c.checkPlatform()
        let arm = try ImageConfig.parse(Array(#"{"architecture":"arm64","os":"linux"}"#.utf8), what: "config")
        #expect(throws: ImageError.wrongPlatform(os: "linux", architecture: "arm64")) { try arm.checkPlatform() }
        #expect(throws: ImageError.self) { _ = try ImageConfig.parse(Array(#"{"config":{"Env":"PATH=/bin"}}"#.utf8), what: "c") }
        #expect(throws: ImageError.self) { _ = try ImageConfig.parse(Array(#"{"config":{"Env":["=x"]}}"#.utf8), what: "c") }
        #expect(throws: ImageError.self) { _ = try ImageConfig.parse(Array("[1]".utf8), what: "c") }
    }

    @Test("warm-up programs: the shell, then the entrypoint's program found in the image's PATH")
    func warmUp() {
        var c = ImageConfig()
        c.command = ["python3", "-c", "pass"]
        c.environment = ["PATH=/opt/bin:/usr/bin"]
        let files: Set<String> = ["bin/sh", "usr/bin/python3"]
        #expect(ImageCache.warmUpPrograms(c, exists: files.contains) == ["/bin/sh", "/usr/bin/python3"])
        c.command = ["/bin/sh", "-c", "x"]
        #expect(ImageCache.warmUpPrograms(c, exists: files.contains) == ["/bin/sh"])
        c.command = ["missing"]
        #expect(ImageCache.warmUpPrograms(c, exists: { _ in false }) == [])
    }

    @Test("references: prefixes, tags, detection by content, and what does not exist")
    func references() throws {
        let scratch = Scratch()
        #expect(mkdir(scratch.path + "/layout", 0o755) == 0)
        scratch.write("layout/oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
        #expect(try ImageReference.parse("oci:" + scratch.path + "/layout:v1") == .ociLayout(directory: scratch.path + "/layout", tag: "v1"))
        #expect(try ImageReference.parse("oci:" + scratch.path + "/layout") == .ociLayout(directory: scratch.path + "/layout", tag: nil))
        #expect(try ImageReference.parse(scratch.path + "/layout") == .ociLayout(directory: scratch.path + "/layout", tag: nil))
        #expect(try ImageReference.parse(scratch.path) == .directory(path: scratch.path))
        var ext4 = [UInt8](repeating: 0, count: 2048)
        ext4[1080] = 0x53; ext4[1081] = 0xEF
        scratch.write("disk.img", ext4)
        #expect(try ImageReference.parse(scratch.path + "/disk.img") == .ext4(path: scratch.path + "/disk.img"))
        scratch.write("docker.tar", tar { t in t.file("manifest.json", Array("[]".utf8)) })
        #expect(try ImageReference.parse(scratch.path + "/docker.tar") == .file(path: scratch.path + "/docker.tar"))
        #expect(try ImageCache.fileKind(scratch.path + "/docker.tar", root: scratch.path) == .dockerArchive(path: scratch.path + "/docker.tar"))
        scratch.write("root.tar", tar { t in t.file("bin/sh", [1]) })
        #expect(mkdir(scratch.path + "/refs", 0o755) == 0)
        #expect(try ImageCache.fileKind(scratch.path + "/root.tar", root: scratch.path) == .tarball(path: scratch.path + "/root.tar"))
        // Remembered by identity: asked again, the answer comes from refs/.
        #expect(listDirectory(scratch.path + "/refs").contains { $0.hasSuffix(".kind") })
        #expect(try ImageCache.fileKind(scratch.path + "/root.tar", root: scratch.path) == .tarball(path: scratch.path + "/root.tar"))
        #expect(throws: ImageError.self) { _ = try ImageReference.parse(scratch.path + "/missing") }
        #expect(throws: ImageError.self) { _ = try ImageReference.parse("oci:" + scratch.path + "/disk.img") }
        #expect(throws: ImageError.self) { _ = try ImageReference.parse("") }
    }
}

/// An OCI layout written by the test: blobs named by their SHA-256.
struct LayoutWriter {
    let dir: String
    init(_ dir: String) {
        self.dir = dir
        mkdir(dir, 0o755)
        mkdir(dir + "/blobs", 0o755)
        mkdir(dir + "/blobs/sha256", 0o755)
        write("oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
    }

    func write(_ rel: String, _ bytes: [UInt8]) {
        let f = fopen(dir + "/" + rel, "w")
        _ = fwrite(bytes, 1, bytes.count, f)
        fclose(f)
    }

    /// Stores a blob; returns its descriptor's JSON.
    @discardableResult
    func blob(_ bytes: [UInt8], mediaType: String, extra: String = "") -> String {
        let hex = SHA256.hex(SHA256.hash(bytes))
        write("blobs/sha256/" + hex, bytes)
        return #"{"mediaType":"\#(mediaType)","digest":"sha256:\#(hex)","size":\#(bytes.count)\#(extra)}"#
    }

    /// An image of `layers`, tagged `tag`.
    func image(_ layers: [[UInt8]], config: String = #"{"architecture":"amd64","os":"linux","config":{"Env":["K=v"]}}"#, tag: String = "t") {
        let configDescriptor = blob(Array(config.utf8), mediaType: "application/vnd.oci.image.config.v1+json")
        let layerDescriptors = layers.map { blob($0, mediaType: "application/vnd.oci.image.layer.v1.tar") }
        let manifest = #"{"schemaVersion":2,"config":\#(configDescriptor),"layers":[\#(layerDescriptors.joined(separator: ","))]}"#
        let m = blob(Array(manifest.utf8), mediaType: "application/vnd.oci.image.manifest.v1+json",
                     extra: #","annotations":{"org.opencontainers.image.ref.name":"\#(tag)"}"#)
        write("index.json", Array(#"{"schemaVersion":2,"manifests":[\#(m)]}"#.utf8))
    }
}

@Suite struct OCILayoutTests {
    let layer = tar { t in
        t.add(TarBuilder.header("etc/", type: "5"))
        t.file("etc/passwd", Array("root:x:0:0:root:/root:/bin/sh\n".utf8))
        t.file("bin/sh", [0x7f])
    }

    @Test("a layout converts to a cached ext4 image; a second prepare finds it; prune removes it")
    func prepareAndCache() throws {
        let scratch = Scratch()
        LayoutWriter(scratch.path + "/layout").image([layer])
        let cache = scratch.path + "/cache"
        let image = try ImageCache.prepare(.ociLayout(directory: scratch.path + "/layout", tag: "t"), cacheDirectory: cache)
        #expect(image.config.environment == ["K=v"])
        #expect(image.warmUp == ["/bin/sh"])
        #expect(try image.users.resolve("root").home == "/root")
        var st = stat()
        #expect(stat(image.rootfsPath, &st) == 0 && st.st_size > 0)
        let again = try ImageCache.prepare(.ociLayout(directory: scratch.path + "/layout", tag: nil), cacheDirectory: cache)
        #expect(again.rootfsPath == image.rootfsPath && again.digest == image.digest)
        #expect(!listDirectory(cache + "/v1").contains { $0.hasPrefix(".tmp-") }, "no staging left")
        #expect(ImageCache.prune(cacheDirectory: cache, unusedForDays: 0).count == 1)
        #expect(access(image.rootfsPath, F_OK) != 0)
    }

    @Test("conversion is reproducible: two caches, a second apart, get the same ext4 bytes (a fleet's hosts verify them)")
    func reproducible() throws {
        let scratch = Scratch()
        LayoutWriter(scratch.path + "/layout").image([layer, tar { t in
            t.add(TarBuilder.header("dev/", type: "5"))
            t.add(TarBuilder.header("dev/null", type: "3", mode: 0o666, major: 1, minor: 3))
            t.add(TarBuilder.header("f", size: 1, mtime: 1_700_000_000), data: [1])
        }])
        var paths: [String] = []
        for cache in ["a", "b"] {
            paths.append(try ImageCache.prepare(.ociLayout(directory: scratch.path + "/layout", tag: nil), cacheDirectory: scratch.path + "/" + cache).rootfsPath)
            usleep(1_100_000) // e2fsprogs' clock would otherwise show
        }
        #expect(paths[0] != paths[1] && sameBytes(paths[0], paths[1]))
    }

    /// Whether two files hold the same bytes (compared, not hashed: a debug build's SHA-256 of 256 MiB takes half a minute).
    func sameBytes(_ a: String, _ b: String) -> Bool {
        let fa = open(a, O_RDONLY), fb = open(b, O_RDONLY)
        defer { close(fa); close(fb) }
        var x = [UInt8](repeating: 0, count: 1 << 20), y = x
        while true {
            let n = read(fa, &x, x.count), m = read(fb, &y, y.count)
            guard n == m, n >= 0 else { return false }
            if n == 0 { return true }
            if memcmp(x, y, n) != 0 { return false }
        }
    }

    @Test("a blob that does not match its descriptor is refused before it is read, and nothing is left")
    func tamperedBlobs() throws {
        let scratch = Scratch()
        let layout = LayoutWriter(scratch.path + "/layout")
        layout.image([layer])
        let hex = SHA256.hex(SHA256.hash(layer))
        // Same size, other bytes.
        var altered = layer
        altered[600] ^= 1
        layout.write("blobs/sha256/" + hex, altered)
        let cache = scratch.path + "/cache"
        #expect(throws: ImageError.self) { _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache) }
        do { _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache) } catch {
            guard case .digestMismatch = error else { Issue.record("\(error)"); return }
        }
        layout.write("blobs/sha256/" + hex, Array(layer.prefix(1000)))
        do { _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache) } catch {
            guard case .sizeMismatch = error else { Issue.record("\(error)"); return }
        }
        unlink(layout.dir + "/blobs/sha256/" + hex)
        do { _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache) } catch {
            guard case .missingBlob = error else { Issue.record("\(error)"); return }
        }
        #expect(listDirectory(cache + "/v1").allSatisfy { $0 == "refs" || $0.hasSuffix(".lock") }, "\(listDirectory(cache + "/v1"))")
    }

    @Test("tags, another platform, a malformed digest")
    func manifests() throws {
        let scratch = Scratch()
        let layout = LayoutWriter(scratch.path + "/layout")
        layout.image([layer], config: #"{"architecture":"arm64","os":"linux"}"#)
        let cache = scratch.path + "/cache"
        #expect(throws: ImageError.wrongPlatform(os: "linux", architecture: "arm64")) {
            _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache)
        }
        #expect(throws: ImageError.noSuchTag("nope", available: ["t"])) {
            _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: "nope"), cacheDirectory: cache)
        }
        layout.write("index.json", Array(#"{"manifests":[{"mediaType":"x","digest":"sha256:../../etc/passwd","size":1}]}"#.utf8))
        #expect(throws: ImageError.self) { _ = try ImageCache.prepare(.ociLayout(directory: layout.dir, tag: nil), cacheDirectory: cache) }
    }
}

@Suite struct TreeLookupTests {
    @Test("a path is found through the tree's own symbolic links (merged /usr), never outside it")
    func mergedUsr() throws {
        let scratch = Scratch()
        let tree = try stage([tar { t in
            t.add(TarBuilder.header("usr/bin/", type: "5"))
            t.file("usr/bin/sh", [1])
            t.add(TarBuilder.header("bin", type: "2", link: "usr/bin"))
            t.add(TarBuilder.header("abs", type: "2", link: "/usr/bin"))
            t.add(TarBuilder.header("loop", type: "2", link: "loop"))
            t.add(TarBuilder.header("usr/bin/python3", type: "2", link: "python3.11"))
        }], in: scratch)
        #expect(tree.contains("bin/sh") && tree.contains("abs/sh") && tree.contains("usr/bin/python3"))
        #expect(!tree.contains("bin/bash") && !tree.contains("loop/x"))
    }
}
