import CSwiftlet
import Glibc
import SwiftletSandbox
import SwiftletSys
import SwiftletVMM
import SwiftletX86

/// The snapshots `swiftlet run` uses by default: one per kernel, rootfs,
/// memory size, vCPU count, extra kernel arguments and Swiftlet version, in
/// `$SWIFTLET_SNAPSHOT_CACHE`, else `<cache>/snapshots`. The first run that
/// needs one creates it (in a child `swiftlet snapshot create`, under a
/// lock, so concurrent runs create it once); later runs restore it.
enum SnapshotCache {
    static var directory: String {
        if let d = getenv("SWIFTLET_SNAPSHOT_CACHE") { return String(cString: d) }
        return Paths.cacheRoot + "/snapshots"
    }

    struct Shape {
        var kernel: String
        var rootfs: String
        var memoryMiB: Int
        var vcpus: Int
        var append: String?
        var bootTimeout: Double
        var seccomp: String
        /// `--image`: the reference (for the child that creates the
        /// snapshot), the image's digest and the agent's initramfs.
        var image: (reference: String, digest: String, initramfs: String)?
        /// `--warm`: more programs to warm before the snapshot.
        var warm: [String] = []
    }

    /// The cache key: the files' inode identities (a rebuilt image is a new
    /// key; the snapshot itself still checks content), the machine's shape
    /// and the Swiftlet and snapshot format versions.
    static func key(_ shape: Shape) throws(RunFailure) -> String {
        var text = "swiftlet=\(SwiftletVersion.string) format=\(Snapshot.formatVersion)"
        for path in [shape.kernel, shape.rootfs] + (shape.image.map { [$0.initramfs] } ?? []) {
            var st = stat()
            guard stat(path, &st) == 0 else { throw RunFailure(message: "\(path): \(String(cString: strerror(errno)))") }
            text += " \(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_ctim.tv_sec).\(st.st_ctim.tv_nsec)"
        }
        text += " mem=\(shape.memoryMiB) cpus=\(shape.vcpus) append=\(shape.append ?? "")"
        if let image = shape.image { text += " image=\(image.digest)" }
        if !shape.warm.isEmpty { text += " warm=" + shape.warm.joined(separator: "\u{0}") }
        return String(SHA256.hex(SHA256.hash(Array(text.utf8))).prefix(24))
    }

    /// The cached snapshot for `shape`, created first when there is none.
    static func snapshot(for shape: Shape) throws(RunFailure) -> Snapshot {
        let root = directory
        do { try makeDirectories(root) } catch { throw RunFailure(message: "snapshot cache \(root): \(error)") }
        let final = root + "/" + (try key(shape))
        if let s = try? Snapshot.load(directory: final) { return s }

        let lock: FileLock
        do { lock = try FileLock(final + ".lock") } catch { throw RunFailure(message: "snapshot cache lock: \(error)") }
        return try lock.whileHeld { () throws(RunFailure) -> Snapshot in
            // Another run may have created it while this one waited.
            if let s = try? Snapshot.load(directory: final) { return s }
            // A snapshot that no longer loads (an older format) is replaced, and
            // what creations that died left behind goes: under the lock, no other
            // process is writing one.
            Snapshot.remove(directory: final)
            removeAbandoned(prefix: String(final.split(separator: "/").last ?? "") + ".tmp-", in: root)
            let temporary = final + ".tmp-\(getpid())"
            try create(shape, at: temporary)
            guard rename(temporary, final) == 0 else {
                Snapshot.remove(directory: temporary)
                throw RunFailure(message: "rename(\(temporary)): \(String(cString: strerror(errno)))")
            }
            do { return try Snapshot.load(directory: final) } catch { throw RunFailure(message: "\(error)") }
        }
    }

    /// Removes the directories in `root` whose names start with `prefix`.
    static func removeAbandoned(prefix: String, in root: String) {
        for name in listDirectory(root) where name.hasPrefix(prefix) { Snapshot.remove(directory: root + "/" + name) }
    }


    /// Runs `swiftlet snapshot create` as a child, its stderr collected so
    /// that a failure is reported as one line.
    static func create(_ shape: Shape, at dir: String) throws(RunFailure) {
        var args = ["swiftlet", "snapshot", "create", "--output", dir, "--kernel", shape.kernel]
        args += shape.image.map { ["--image", $0.reference] } ?? ["--rootfs", shape.rootfs]
        args += ["--mem", String(shape.memoryMiB), "--cpus", String(shape.vcpus),
                 "--boot-timeout", String(shape.bootTimeout), "--seccomp", shape.seccomp]
        if let a = shape.append { args += ["--append", a] }
        for program in shape.warm { args += ["--warm", program] }
        let result: Subprocess.Result
        do {
            result = try Subprocess.run(path: "/proc/self/exe", argv: args, environment: ["SWIFTLET_SNAPSHOT_PARENT=\(getpid())"])
        } catch {
            throw RunFailure(message: "spawning swiftlet snapshot create: \(String(cString: strerror(error.errno)))")
        }
        guard result.status == 0 else {
            let last = result.lastLine
            let reason = last.hasPrefix("swiftlet: error: ") ? String(last.dropFirst(17)) : last
            throw RunFailure(message: "creating the cached snapshot: \(reason)")
        }
    }
}
