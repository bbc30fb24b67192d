import CSwiftlet
import Glibc
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletPersist
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

/// A snapshot on disk: a directory holding `state` (a checksummed header,
/// the manifest and the machine state) and `memory` (guest RAM, sparse).
///
/// `state` starts with the magic `SWLTSNAP`, the format version (u32), a
/// reserved u32, the payload length (u64) and the payload's SHA-256; the
/// payload is the manifest, then the state. Any byte flipped or cut off is
/// caught before anything is decoded. The memory file's size is checked on
/// every restore; its bytes are not hashed then (that would read every page
/// and undo the lazy, shared mapping), so a snapshot directory must be as
/// trusted as the kernel it was taken from.
public final class Snapshot: Sendable {
    public static let magic: [UInt8] = Array("SWLTSNAP".utf8)
    public static let formatVersion: UInt32 = 1
    public static let stateFileName = "state"
    public static let memoryFileName = "memory"
    static let headerSize = 8 + 4 + 4 + 8 + 32

    public let directory: String
    public let manifest: SnapshotManifest
    let state: MachineState

    init(directory: String, manifest: SnapshotManifest, state: MachineState) {
        self.directory = directory
        self.manifest = manifest
        self.state = state
    }

    public var memoryPath: String { directory + "/" + Self.memoryFileName }

    /// Removes a snapshot directory, whole or half-written: its two files,
    /// then itself. Anything else in it stays, and so does the directory.
    public static func remove(directory: String) {
        unlink(directory + "/" + stateFileName)
        unlink(directory + "/" + memoryFileName)
        rmdir(directory)
    }

    /// Reads and checks a snapshot: magic, format, checksum, Swiftlet
    /// version, then the memory file's size.
    public static func load(directory: String) throws(SnapshotError) -> Snapshot {
        let path = directory + "/" + stateFileName
        var st = stat()
        guard stat(directory, &st) == 0 else { throw .system(.last("stat(\(directory))")) }
        let bytes = try readStateFile(path)
        guard bytes.count >= headerSize, Array(bytes[0..<8]) == magic else {
            throw .corrupt("\(path) is not a Swiftlet snapshot")
        }
        var header = StateReader(Array(bytes[8..<headerSize]))
        let format: UInt32, length: UInt64
        do {
            format = try header.u32()
            _ = try header.u32()
            length = try header.u64()
        } catch {
            throw .corruptState(error)
        }
        guard format == formatVersion else {
            throw .incompatible("\(directory) has snapshot format \(format); this Swiftlet reads format \(formatVersion)")
        }
        let digest = Array(bytes[(headerSize - 32)..<headerSize])
        guard length == UInt64(bytes.count - headerSize) else {
            throw .corrupt("\(path) holds \(bytes.count - headerSize) bytes of state, its header says \(length) (truncated?)")
        }
        let payload = Array(bytes[headerSize...])
        guard SHA256.hash(payload) == digest else { throw .corrupt("\(path) fails its checksum") }
        var r = StateReader(payload)
        let manifest = try decodeManifest(&r)
        guard manifest.swiftletVersion == SwiftletVersion.string else {
            throw .incompatible("\(directory) was taken by Swiftlet \(manifest.swiftletVersion); this is Swiftlet \(SwiftletVersion.string)")
        }
        let state = try decodeState(&r, manifest: manifest)
        guard r.isAtEnd else { throw .corrupt("\(path) has trailing bytes") }
        // The memory file is checked on the descriptor that maps it (`openMemory`).
        return Snapshot(directory: directory, manifest: manifest, state: state)
    }

    /// Opens the memory file and checks it on that descriptor, which the
    /// machine then maps: a regular file of exactly the manifest's size.
    public func openMemory() throws(SnapshotError) -> OwnedFD {
        let file = try Self.open(memoryPath)
        var st = stat()
        guard fstat(file.raw, &st) == 0 else { throw .system(.last("fstat(\(memoryPath))")) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .corrupt("\(memoryPath) is not a regular file") }
        guard Int(st.st_size) == manifest.memoryFileSize else {
            throw .corrupt("\(memoryPath) is \(st.st_size) bytes, the snapshot's memory is \(manifest.memoryFileSize) (truncated?)")
        }
        return file
    }

    /// Opens `path` for reading (close-on-exec, EINTR retried).
    static func open(_ path: String) throws(SnapshotError) -> OwnedFD {
        do { return try OwnedFD(opening: path, flags: O_RDONLY) } catch { throw .system(error) }
    }

    /// The state file's bytes: a regular file of at most `maxStateSize`
    /// (a path that leads to a device or a huge file is refused unread).
    static let maxStateSize = 16 << 20
    static func readStateFile(_ path: String) throws(SnapshotError) -> [UInt8] {
        let file = try Self.open(path)
        var st = stat()
        guard fstat(file.raw, &st) == 0 else { throw .system(.last("fstat(\(path))")) }
        guard st.st_mode & S_IFMT == S_IFREG, st.st_size <= maxStateSize else {
            throw .corrupt("\(path) is not a regular file of at most \(maxStateSize >> 20) MiB")
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { b in Result { () throws(SystemError) in try readFully(file.raw, into: b, offset: 0) } }
        let count: Int
        do { count = try n.get() } catch { throw .system(error) }
        guard count == bytes.count else { throw .corrupt("\(path) changed while it was read") }
        return bytes
    }

    // MARK: - Encoding

    static func encode(_ m: SnapshotManifest, _ s: MachineState) -> [UInt8] {
        var w = StateWriter()
        m.save(to: &w)
        s.save(to: &w)
        return w.bytes
    }

    static func decodeManifest(_ r: inout StateReader) throws(SnapshotError) -> SnapshotManifest {
        do { return try SnapshotManifest(from: &r) } catch { throw .corruptState(error) }
    }

    static func decodeState(_ r: inout StateReader, manifest: SnapshotManifest) throws(SnapshotError) -> MachineState {
        let state: MachineState
        do { state = try MachineState(from: &r) } catch { throw .corruptState(error) }
        guard state.vcpus.count == manifest.vcpuCount else {
            throw .corrupt("\(state.vcpus.count) vCPU states for \(manifest.vcpuCount) vCPUs")
        }
        return state
    }
}

/// Writes a snapshot of a paused machine into a directory prepared before
/// the guest ran (its files open, the kernel and images hashed), so that
/// writing needs no path lookups from the sandboxed control thread.
public final class SnapshotWriter {
    public let directory: String
    private let stateFile: OwnedFD
    private let memoryFile: OwnedFD
    let kernel: FileIdentity
    let driveIdentities: [FileIdentity?]

    /// Creates `directory` (which must not exist) and its files, and hashes
    /// the kernel and every read-only or ephemeral drive of `config`.
    public init(directory: String, config: MachineConfig) throws(SnapshotError) {
        // An initramfs needs nothing of its own: once booted, what the guest unpacked of it is in guest memory.
        guard case let .linux(kernelPath, _, _) = config.payload else {
            throw .unsupported("only a Linux kernel can be snapshotted")
        }
        guard config.net == nil else { throw .unsupported("a machine with a network device cannot be snapshotted") }
        kernel = try FileIdentity.of(kernelPath)
        var ids: [FileIdentity?] = []
        for d in config.drives { ids.append(d.readOnly || d.ephemeral ? try FileIdentity.of(d.path) : nil) }
        driveIdentities = ids
        guard mkdir(directory, 0o755) == 0 else { throw .system(.last("mkdir(\(directory))")) }
        self.directory = directory
        do {
            stateFile = try OwnedFD(opening: directory + "/" + Snapshot.stateFileName, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o444)
            memoryFile = try OwnedFD(opening: directory + "/" + Snapshot.memoryFileName, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o444)
        } catch {
            throw .system(error)
        }
    }

    /// Writes memory (zero pages left as holes), then the state, and syncs both.
    func write(manifest: SnapshotManifest, state: MachineState, memory: GuestMemory) throws(SnapshotError) {
        let (stateFD, memoryFD) = (stateFile.raw, memoryFile.raw)
        guard ftruncate(memoryFD, off_t(manifest.memoryFileSize)) == 0 else { throw .system(.last("ftruncate(memory)")) }
        var fileOffset = 0
        let page = 4096
        for region in memory.regions {
            var start = 0
            // Runs of non-zero pages, each written with one pwrite.
            while start < region.size {
                while start < region.size && Self.isZero(region.host + start, page) { start += page }
                var end = start
                while end < region.size && !Self.isZero(region.host + end, page) { end += page }
                if end > start {
                    do {
                        try pwriteAll(memoryFD, UnsafeRawBufferPointer(start: region.host + start, count: end - start), offset: fileOffset + start)
                    } catch { throw .system(error) }
                }
                start = end
            }
            fileOffset += region.size
        }
        let payload = Snapshot.encode(manifest, state)
        var w = StateWriter()
        w.u32(Snapshot.formatVersion)
        w.u32(0)
        w.u64(UInt64(payload.count))
        let file = Snapshot.magic + w.bytes + SHA256.hash(payload) + payload
        let written = file.withUnsafeBytes { b in Result { () throws(SystemError) in try pwriteAll(stateFD, b, offset: 0) } }
        do { try written.get() } catch { throw .system(error) }
        guard fsync(memoryFD) == 0, fsync(stateFD) == 0 else { throw .system(.last("fsync(snapshot)")) }
    }

    private static func isZero(_ p: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var i = 0
        while i < count {
            if UnsafeRawPointer(p).load(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        return true
    }

    private func pwriteAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, offset: Int) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = try retryingEINTR("pwrite(snapshot)") { pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done)) }
            guard n > 0 else { throw SystemError("pwrite(snapshot)", errno: EIO) }
            done += n
        }
    }
}
