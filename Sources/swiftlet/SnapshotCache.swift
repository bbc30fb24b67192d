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

        let lock = open(final + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw RunFailure(message: "snapshot cache lock \(final).lock: \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        guard retryingEINTR({ flock(lock, LOCK_EX) }) == 0 else {
            throw RunFailure(message: "flock(\(final).lock): \(String(cString: strerror(errno)))")
        }
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

    /// Removes the directories in `root` whose names start with `prefix`.
    static func removeAbandoned(prefix: String, in root: String) {
        guard let d = opendir(root) else { return }
        defer { closedir(d) }
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix(prefix) { Snapshot.remove(directory: root + "/" + name) }
        }
    }


    /// Runs `swiftlet snapshot create` as a child, its stderr collected so
    /// that a failure is reported as one line.
    static func create(_ shape: Shape, at dir: String) throws(RunFailure) {
        var args = ["swiftlet", "snapshot", "create", "--output", dir, "--kernel", shape.kernel]
        args += shape.image.map { ["--image", $0.reference] } ?? ["--rootfs", shape.rootfs]
        args += [
                    "--mem", String(shape.memoryMiB), "--cpus", String(shape.vcpus),
                    "--boot-timeout", String(shape.bootTimeout), "--seccomp", shape.seccomp]
        if let a = shape.append { args += ["--append", a] }
        for program in shape.warm { args += ["--warm", program] }
        var pipeFDs: [Int32] = [-1, -1]
        guard swl_pipe2(&pipeFDs, O_CLOEXEC) == 0 else { throw RunFailure(message: "pipe2: \(String(cString: strerror(errno)))") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        setenv("SWIFTLET_SNAPSHOT_PARENT", String(getpid()), 1)
        defer { unsetenv("SWIFTLET_SNAPSHOT_PARENT") }
        var cArgs = args.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/proc/self/exe", &actions, nil, &cArgs, environ)
        close(pipeFDs[1])
        defer { close(pipeFDs[0]) }
        guard rc == 0 else { throw RunFailure(message: "spawning swiftlet snapshot create: \(String(cString: strerror(rc)))") }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(pipeFDs[0], b.baseAddress, b.count) } }
            guard n > 0 else { break }
            output += chunk[0..<n]
        }
        var status: Int32 = 0
        _ = retryingEINTR { waitpid(pid, &status, 0) }
        guard status == 0 else {
            let text = String(decoding: output, as: UTF8.self)
            let last = text.split(separator: "\n").last.map(String.init) ?? "exit status \(status)"
            let reason = last.hasPrefix("swiftlet: error: ") ? String(last.dropFirst(17)) : last
            throw RunFailure(message: "creating the cached snapshot: \(reason)")
        }
    }
}
