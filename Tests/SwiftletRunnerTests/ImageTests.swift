import Foundation
import Logging
import Testing
@testable import SwiftletRunner

/// A stand-in for `swiftlet` (a shell script): `image prepare REF` prints
/// the path of a file written here (or fails, for a reference holding
/// "fail"), `snapshot create --output DIR ...` makes DIR/state; each call's
/// arguments are appended to `log`. No VM starts.
final class FakeSwiftlet {
    let state = TempState()
    var directory: String { state.path }
    var path: String { directory + "/swiftlet" }
    var log: String { directory + "/calls" }
    /// What `image prepare` prints: a file with the given content.
    var prepared: String { directory + "/prepared/rootfs.ext4" }

    init(preparedContent: String = "converted image bytes\n") throws {
        try FileManager.default.createDirectory(atPath: directory + "/prepared", withIntermediateDirectories: true)
        try Data(preparedContent.utf8).write(to: URL(fileURLWithPath: prepared))
        let script = """
            #!/bin/sh
            echo "$*" >> '\(log)'
            case "$1 $2" in
            "image prepare")
                case "$3" in
                *fail*) echo "swiftlet: warning: a warning first" >&2; echo "swiftlet: error: image $3: not a tar archive" >&2; exit 125 ;;
                esac
                echo '\(prepared)' ;;
            "snapshot create")
                mkdir -p "$4" && touch "$4/state" ;;
            *) echo "swiftlet: error: unexpected call" >&2; exit 125 ;;
            esac
            """
        try Data(script.utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
    }

    var calls: [String] { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }

    /// A file that is an ext4 image as far as the magic goes (0xEF53 at 1080).
    func ext4File(_ name: String) throws -> String {
        var bytes = [UInt8](repeating: 0, count: 4096)
        (bytes[1080], bytes[1081]) = (0x53, 0xEF)
        let p = directory + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }

    func file(_ name: String, _ content: String) throws -> String {
        let p = directory + "/" + name
        try Data(content.utf8).write(to: URL(fileURLWithPath: p))
        return p
    }

    func runner(store: any JobStore, state: String) throws -> Runner {
        var config = RunnerConfig(stateDirectory: state, swiftlet: path, kernel: nil, defaultRootfs: try ext4File("default.ext4"),
                                  maxVMs: 2, memoryBudgetMiB: 1024, jail: false)
        config.maxWarm = 0
        return Runner(config: config, store: store, logger: Logger(label: "test"))
    }
}

/// SHA-256 of a string's bytes, hex (through a file: what the runner hashes).
func sha256Hex(_ s: String) throws -> String {
    let state = TempState()
    try FileManager.default.createDirectory(atPath: state.path, withIntermediateDirectories: true)
    try Data(s.utf8).write(to: URL(fileURLWithPath: state.path + "/f"))
    return try Snapshots.sha256(ofFile: state.path + "/f")
}

/// `deploy` with an image reference: converted by `swiftlet image prepare`
/// (a child, waited for off the actor), its ext4 hashed, the snapshot made
/// and the jobs started with `--image`.
@Suite struct RunnerImageTests {
    let fake: FakeSwiftlet
    let runner: Runner
    let stateDir = TempState()

    init() throws {
        fake = try FakeSwiftlet()
        try FileManager.default.createDirectory(atPath: stateDir.path, withIntermediateDirectories: true)
        runner = try fake.runner(store: try SQLiteStore(directory: stateDir.path), state: stateDir.path)
    }

    @Test func aReferenceIsConvertedAndItsExt4Hashed() async throws {
        let (f, created) = try await runner.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: "tar:/srv/rootfs.tar", user: "worker"))
        #expect(created)
        #expect(fake.calls == ["image prepare tar:/srv/rootfs.tar"])
        #expect(f.imagePath == URL(fileURLWithPath: fake.prepared).resolvingSymlinksInPath().path)
        #expect(try f.imageSha256 == sha256Hex("converted image bytes\n"))
        #expect(f.spec.imageReference == "tar:/srv/rootfs.tar" && f.spec.imageConverted == nil)
        // The same spec again: converted again (swiftlet's cache answers), the same version.
        let (again, createdAgain) = try await runner.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: "tar:/srv/rootfs.tar", user: "worker"))
        #expect(!createdAgain && again.version == f.version)
    }

    @Test func aPlainPathIsConvertedUnlessItIsExt4() async throws {
        let tarball = try fake.file("rootfs.tar", "not ext4")
        let (t, _) = try await runner.deploy(name: "tarball", spec: FunctionSpec(command: ["cat"], image: tarball, user: "1000:1000"))
        #expect(t.spec.imageConverted == true && t.spec.imageReference == tarball)
        #expect(try t.imageSha256 == sha256Hex("converted image bytes\n"))
        let directory = fake.directory + "/prepared"
        let (d, _) = try await runner.deploy(name: "directory", spec: FunctionSpec(command: ["cat"], image: directory))
        #expect(d.spec.imageReference == directory)
        let ext4 = try fake.ext4File("plain.ext4")
        let (e, _) = try await runner.deploy(name: "ext4", spec: FunctionSpec(command: ["cat"], image: ext4))
        #expect(e.spec.imageConverted == nil && e.spec.imageReference == nil)
        #expect(e.imagePath == URL(fileURLWithPath: ext4).resolvingSymlinksInPath().path)
        // ext4: is used in place too, but run through --image (so it may name a user).
        let (x, _) = try await runner.deploy(name: "ext4-prefixed", spec: FunctionSpec(command: ["cat"], image: "ext4:" + ext4, user: "root"))
        #expect(x.spec.imageReference == "ext4:" + ext4 && x.imageSha256 == e.imageSha256 && x.imagePath == e.imagePath)
        #expect(Snapshots.shape(x) != Snapshots.shape(e), "booted another way: another snapshot")
        #expect(fake.calls == ["image prepare \(tarball)", "image prepare \(directory)"], "ext4 images are used as they are")
        await #expect(throws: RunnerError.badRequest("image ext4:\(tarball): not an ext4 image (no ext4 superblock)")) {
            try await runner.deploy(name: "not-ext4", spec: FunctionSpec(command: ["cat"], image: "ext4:" + tarball))
        }
    }

    @Test func aFailedConversionIsSwiftletsLineAsA400() async throws {
        await #expect(throws: RunnerError.badRequest("image tar:/srv/fail.tar: not a tar archive")) {
            try await runner.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: "tar:/srv/fail.tar"))
        }
        #expect(try await runner.store.function("f") == nil)
        await #expect(throws: RunnerError.badRequest("image /nonexistent/image.tar does not exist or is not readable")) {
            try await runner.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: "/nonexistent/image.tar"))
        }
    }

    @Test("--image-root: only images under the roots, links resolved; refused before anything is read or converted")
    func imageRoots() async throws {
        let allowed = fake.directory + "/allowed"
        try FileManager.default.createDirectory(atPath: allowed, withIntermediateDirectories: true)
        var config = RunnerConfig(stateDirectory: stateDir.path, swiftlet: fake.path, kernel: nil, defaultRootfs: try fake.ext4File("default.ext4"),
                                  maxVMs: 2, memoryBudgetMiB: 1024, jail: false)
        config.maxWarm = 0
        config.imageRoots = [allowed]
        let store = try SQLiteStore(directory: stateDir.path + "/roots")
        let guarded = Runner(config: config, store: store, logger: Logger(label: "test"))
        let inside = try fake.file("allowed/rootfs.tar", "tar")
        try FileManager.default.createSymbolicLink(atPath: allowed + "/escape", withDestinationPath: "/root")
        for image in ["dir:/root", "/etc/hostname", "dir:" + allowed + "/escape", "oci:" + allowed + "/../prepared:latest", "tar:" + allowed + "/../calls"] {
            await #expect(throws: RunnerError.self, "\(image)") {
                try await guarded.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: image))
            }
        }
        #expect(fake.calls.isEmpty, "nothing outside was converted")
        let (f, _) = try await guarded.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: "tar:" + inside))
        #expect(f.spec.imageReference == "tar:" + inside)
        let (d, _) = try await guarded.deploy(name: "d", spec: FunctionSpec(command: ["cat"]))
        #expect(d.spec.imageReference == nil, "\"default\" is always allowed")
    }

    @Test func aUserNeedsAConvertedImage() async throws {
        let ext4 = try fake.ext4File("plain.ext4")
        await #expect {
            try await runner.deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: ext4, user: "root"))
        } throws: { error in
            guard case let .badRequest(m) = error as? RunnerError else { return false }
            return m.hasPrefix("'user' needs an image run through Swiftlet's agent initramfs") && m.hasSuffix("give it as ext4:\(ext4)")
        }
        #expect(fake.calls.isEmpty)
    }

    @Test func theSnapshotAndTheJobsTakeTheReference() async throws {
        let (f, _) = try await runner.deploy(name: "f", spec: FunctionSpec(command: ["sh", "-c", "id"], image: "oci:/srv/layout:v1", env: ["A": "1"],
                                                                        user: "worker", memoryMiB: 256))
        let (plain, _) = try await runner.deploy(name: "plain", spec: FunctionSpec(command: ["cat"], image: try fake.ext4File("plain.ext4")))
        #expect(Snapshots.shape(f).hasSuffix("-m256-c1-image") && !Snapshots.shape(plain).hasSuffix("-image"))

        let dir = try await runner.snapshots.snapshot(for: f)
        let create = try #require(fake.calls.last)
        #expect(create.hasPrefix("snapshot create --output \(dir).tmp-"))
        #expect(create.hasSuffix(" --image oci:/srv/layout:v1 --mem 256 --cpus 1 --seccomp strict"))
        _ = try await runner.snapshots.snapshot(for: plain)
        #expect(try #require(fake.calls.last).contains(" --rootfs \(plain.imagePath) --mem 128 "))

        let launch = VMLaunch(swiftlet: fake.path, snapshotDirectory: dir, spec: f.spec, jail: true, warm: false)
        let args = launch.arguments
        let dash = try #require(args.firstIndex(of: "--"))
        #expect(Array(args[dash...]) == ["--", "sh", "-c", "id"])
        let options = Array(args[..<dash])
        #expect(options.starts(with: ["swiftlet", "run", "--snapshot", dir]))
        #expect(options.suffix(6) == ["--env", "A=1", "--image", "oci:/srv/layout:v1", "--user", "worker"])
        #expect(!VMLaunch(swiftlet: fake.path, snapshotDirectory: dir, spec: plain.spec, jail: false, warm: false).arguments.contains("--image"))
    }
}
