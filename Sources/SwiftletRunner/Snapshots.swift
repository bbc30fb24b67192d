import CRunner
import Crypto
import Foundation
import SwiftletSys

/// Function versions' snapshots under `<state>/snapshots`. A snapshot is of
/// an idle guest, so it depends only on the image's content, memory and
/// vCPUs: versions (and functions) of one shape share it. Each is made once
/// (`swiftlet snapshot create`, one cold boot), however many invocations
/// ask for it at the same moment, and removed when no function or
/// unfinished job needs its shape any more.
public actor Snapshots {
    let directory: String
    let swiftlet: String
    let kernel: String?
    let spawner: Spawner
    let metrics: RunnerMetrics
    private var creating: [String: Task<String, Error>] = [:]

    public init(directory: String, swiftlet: String, kernel: String?, spawner: Spawner, metrics: RunnerMetrics) {
        (self.directory, self.swiftlet, self.kernel, self.spawner, self.metrics) = (directory, swiftlet, kernel, spawner, metrics)
    }

    /// The shape's directory name: image digest, memory, vCPUs; and for an
    /// image run through `--image` (booted through the agent initramfs),
    /// `-image`, apart from the same ext4 booted as it is.
    public nonisolated static func shape(_ f: FunctionRecord) -> String {
        "\(f.imageSha256.prefix(24))-m\(f.spec.memoryMiB)-c\(f.spec.vcpus)" + (f.spec.imageReference == nil ? "" : "-image")
    }

    /// The version's snapshot directory, created first when missing. Every
    /// caller waiting on one creation gets its result.
    public func snapshot(for f: FunctionRecord) async throws(RunnerError) -> String {
        let key = Self.shape(f)
        let final = directory + "/" + key
        if access(final + "/state", R_OK) == 0 { return final }
        let task: Task<String, Error>
        if let t = creating[key] {
            task = t
        } else {
            task = Task { try await self.create(f, at: final) }
            creating[key] = task
        }
        do {
            let dir = try await task.value
            creating[key] = nil
            return dir
        } catch {
            creating[key] = nil
            if let e = error as? RunnerError { throw e }
            throw .internalFailure("creating the snapshot for \(f.name) version \(f.version): \(error)")
        }
    }

    private func create(_ f: FunctionRecord, at final: String) async throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let temporary = final + ".tmp-\(getpid())"
        Self.removeTree(temporary)
        // An image reference is booted as `run --image` boots it (its ext4
        // through Swiftlet's agent initramfs); its jobs restore with `--image` too.
        var args = ["swiftlet", "snapshot", "create", "--output", temporary]
        if let reference = f.spec.imageReference { args += ["--image", reference] } else { args += ["--rootfs", f.imagePath] }
        args += ["--mem", String(f.spec.memoryMiB), "--cpus", String(f.spec.vcpus), "--seccomp", "strict"]
        if let kernel { args += ["--kernel", kernel] }
        let child = try await ChildProcess.run(path: swiftlet, argv: args, spawner: spawner, captureStdout: false)
        guard child.succeeded else {
            Self.removeTree(temporary)
            throw RunnerError.internalFailure("creating the snapshot of \(f.name) version \(f.version): \(child.errorLine)")
        }
        guard rename(temporary, final) == 0 else {
            Self.removeTree(temporary)
            throw RunnerError.internalFailure("rename(\(temporary)): \(String(cString: strerror(errno)))")
        }
        metrics.snapshotsCreated.increment()
        return final
    }

    /// Removes the snapshots of shapes not in `inUse`, and leftovers of
    /// creations that died. Returns what it removed.
    public func collect(keeping inUse: Set<String>) -> [String] {
        let keep = Set(inUse.map { directory + "/" + $0 })
        let busy = Set(creating.keys.map { directory + "/" + $0 })
        var removed: [String] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let full = directory + "/" + name
            let base = name.contains(".tmp-") ? String(name[..<name.range(of: ".tmp-")!.lowerBound]) : name
            if keep.contains(full) || busy.contains(directory + "/" + base) { continue }
            Self.removeTree(full)
            removed.append(full)
        }
        return removed
    }

    static func removeTree(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    /// SHA-256 of a file, hex: what a version records of its image.
    public static func sha256(ofFile path: String) throws(RunnerError) -> String {
        let file: OwnedFD
        do { file = try OwnedFD(opening: path, flags: O_RDONLY) } catch {
            throw .badRequest("image \(path): \(String(cString: strerror(error.errno)))")
        }
        let fd = file.raw
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw .badRequest("image \(path) is not a regular file") }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { b in retryingEINTR { read(fd, b.baseAddress, b.count) } }
            guard n >= 0 else { throw .badRequest("reading image \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            hasher.update(data: buffer[0..<n])
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
