import CSwiftlet
import Glibc
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

/// What a snapshot was taken of: enough to rebuild the same machine and to
/// refuse a kernel, image or Swiftlet that differs from the one snapshotted.
public struct SnapshotManifest: Sendable {
    /// One virtio-blk drive as it was attached.
    public struct Drive: Sendable {
        public var config: DriveConfig
        public var capacityBytes: UInt64
        /// The content the guest may hold cached: for read-only and ephemeral
        /// drives (their base never changes). A writable drive's content is
        /// the guest's own and is not pinned.
        public var identity: FileIdentity?
    }

    public var swiftletVersion: String
    /// CLOCK_REALTIME when the snapshot was taken, in ns.
    public var createdNanos: UInt64
    /// The guest's CLOCK_MONOTONIC at the pause (its agent's report), 0 if unknown.
    public var guestClockNanos: UInt64
    public var memoryMiB: Int
    public var vcpuCount: Int
    public var cpuTemplate: CPUTemplateChoice
    /// The whole kernel command line the guest booted with.
    public var cmdline: String
    public var kernelPath: String
    public var kernel: FileIdentity
    public var drives: [Drive]
    /// The vsock device's guest CID, when the machine had one.
    public var vsockCID: UInt32?
    /// Guest RAM: the memory file holds these ranges back to back.
    public var memoryRanges: [(base: UInt64, size: Int)]

    public var memoryFileSize: Int { memoryRanges.reduce(0) { $0 + $1.size } }
}

/// A vCPU as saved: the CPUID table it ran with, then KVM's state.
struct SavedVcpu {
    var cpuid: [kvm_cpuid_entry2]
    var state: VcpuState
}

/// The whole machine at a pause.
struct MachineState {
    var vcpus: [SavedVcpu]
    var vm: VMState
    var serial: Serial8250.SavedState
    var transports: [VirtioMMIOTransport.SavedState]
}

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
        let format = try header.u32()
        guard format == formatVersion else {
            throw .incompatible("\(directory) has snapshot format \(format); this Swiftlet reads format \(formatVersion)")
        }
        _ = try header.u32()
        let length = try header.u64()
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
        let fd = open(memoryPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system(.last("open(\(memoryPath))")) }
        let file = OwnedFD(taking: fd)
        var st = stat()
        guard fstat(file.raw, &st) == 0 else { throw .system(.last("fstat(\(memoryPath))")) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .corrupt("\(memoryPath) is not a regular file") }
        guard Int(st.st_size) == manifest.memoryFileSize else {
            throw .corrupt("\(memoryPath) is \(st.st_size) bytes, the snapshot's memory is \(manifest.memoryFileSize) (truncated?)")
        }
        return file
    }

    /// The state file's bytes: a regular file of at most `maxStateSize`
    /// (a path that leads to a device or a huge file is refused unread).
    static let maxStateSize = 16 << 20
    static func readStateFile(_ path: String) throws(SnapshotError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system(.last("open(\(path))")) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .system(.last("fstat(\(path))")) }
        guard st.st_mode & S_IFMT == S_IFREG, st.st_size <= maxStateSize else {
            throw .corrupt("\(path) is not a regular file of at most \(maxStateSize >> 20) MiB")
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { b in Result { () throws(SystemError) in try readFully(fd, into: b, offset: 0) } }
        let count: Int
        do { count = try n.get() } catch { throw .system(error) }
        guard count == bytes.count else { throw .corrupt("\(path) changed while it was read") }
        return bytes
    }

    // MARK: - Encoding

    static func encode(_ m: SnapshotManifest, _ s: MachineState) -> [UInt8] {
        var w = StateWriter()
        w.string(m.swiftletVersion)
        w.u64(m.createdNanos)
        w.u64(m.guestClockNanos)
        w.u32(UInt32(m.memoryMiB))
        w.u32(UInt32(m.vcpuCount))
        w.string(m.cpuTemplate.rawValue)
        w.string(m.cmdline)
        w.string(m.kernelPath)
        m.kernel.encode(&w)
        w.u32(UInt32(m.drives.count))
        for d in m.drives {
            w.string(d.config.path)
            w.bool(d.config.readOnly)
            w.bool(d.config.ephemeral)
            w.bool(d.config.id != nil)
            if let id = d.config.id { w.string(id) }
            w.u64(d.capacityBytes)
            w.bool(d.identity != nil)
            d.identity?.encode(&w)
        }
        w.bool(m.vsockCID != nil)
        w.u32(m.vsockCID ?? 0)
        w.u32(UInt32(m.memoryRanges.count))
        for r in m.memoryRanges {
            w.u64(r.base)
            w.u64(UInt64(r.size))
        }

        w.u32(UInt32(s.vcpus.count))
        for v in s.vcpus {
            w.u32(UInt32(v.cpuid.count))
            for e in v.cpuid { w.raw(e) }
            w.raw(v.state.regs)
            w.raw(v.state.sregs)
            w.raw(v.state.xsave)
            w.raw(v.state.xcrs)
            w.raw(v.state.debugRegs)
            w.raw(v.state.lapic)
            w.u32(UInt32(v.state.msrs.count))
            for msr in v.state.msrs {
                w.u32(msr.index)
                w.u64(msr.value)
            }
            w.raw(v.state.events)
            w.raw(v.state.mpState)
            w.u32(v.state.tscKHz)
        }
        w.raw(s.vm.picMaster)
        w.raw(s.vm.picSlave)
        w.raw(s.vm.ioapic)
        w.raw(s.vm.pit)
        w.raw(s.vm.clock)
        let u = s.serial
        for b in [u.ier, u.lcr, u.mcr, u.scratch, u.dll, u.dlm] { w.u8(b) }
        w.bool(u.fifoEnabled)
        w.bool(u.thrInterruptPending)
        w.u32(UInt32(s.transports.count))
        for t in s.transports {
            w.u32(t.status)
            w.u32(t.deviceFeaturesSel)
            w.u32(t.driverFeaturesSel)
            w.u64(t.driverFeatures)
            w.u32(t.queueSel)
            w.u32(t.interruptStatus)
            w.u32(UInt32(t.queues.count))
            for q in t.queues {
                w.u16(q.size)
                w.u64(q.desc)
                w.u64(q.driver)
                w.u64(q.device)
                w.bool(q.ready)
                w.u16(q.nextAvail)
                w.u16(q.nextUsed)
            }
        }
        return w.bytes
    }

    static func decodeManifest(_ r: inout StateReader) throws(SnapshotError) -> SnapshotManifest {
        let version = try r.string()
        let created = try r.u64()
        let guestClock = try r.u64()
        let memoryMiB = Int(try r.u32())
        let vcpuCount = Int(try r.u32())
        let templateName = try r.string()
        guard let template = CPUTemplateChoice(rawValue: templateName) else { throw .corrupt("unknown CPU template \(templateName)") }
        let cmdline = try r.string()
        let kernelPath = try r.string(limit: 4096)
        let kernel = try FileIdentity.decode(&r)
        var drives: [SnapshotManifest.Drive] = []
        for _ in 0..<(try r.count(itemSize: 8, limit: MachineConfig.maximumVirtioDevices)) {
            let path = try r.string(limit: 4096)
            let readOnly = try r.bool()
            let ephemeral = try r.bool()
            let id = try r.bool() ? try r.string(limit: 20) : nil
            let capacity = try r.u64()
            let identity = try r.bool() ? try FileIdentity.decode(&r) : nil
            drives.append(.init(config: DriveConfig(path: path, readOnly: readOnly, ephemeral: ephemeral, id: id), capacityBytes: capacity, identity: identity))
        }
        let hasVsock = try r.bool()
        let cid = try r.u32()
        var ranges: [(base: UInt64, size: Int)] = []
        for _ in 0..<(try r.count(itemSize: 16, limit: 8)) {
            let base = try r.u64()
            let size = try r.u64()
            guard size > 0, size <= 1 << 46 else { throw .corrupt("a memory range of \(size) bytes") }
            ranges.append((base, Int(size)))
        }
        return SnapshotManifest(swiftletVersion: version, createdNanos: created, guestClockNanos: guestClock, memoryMiB: memoryMiB, vcpuCount: vcpuCount,
                                cpuTemplate: template, cmdline: cmdline, kernelPath: kernelPath, kernel: kernel, drives: drives,
                                vsockCID: hasVsock ? cid : nil, memoryRanges: ranges)
    }

    static func decodeState(_ r: inout StateReader, manifest: SnapshotManifest) throws(SnapshotError) -> MachineState {
        let vcpuCount = try r.count(itemSize: 64, limit: MachineConfig.maximumVcpus)
        guard vcpuCount == manifest.vcpuCount else { throw .corrupt("\(vcpuCount) vCPU states for \(manifest.vcpuCount) vCPUs") }
        var vcpus: [SavedVcpu] = []
        for _ in 0..<vcpuCount {
            var cpuid: [kvm_cpuid_entry2] = []
            for _ in 0..<(try r.count(itemSize: MemoryLayout<kvm_cpuid_entry2>.size, limit: Int(SWL_MAX_CPUID_ENTRIES))) {
                cpuid.append(try r.raw(kvm_cpuid_entry2()))
            }
            var s = VcpuState()
            s.regs = try r.raw(s.regs)
            s.sregs = try r.raw(s.sregs)
            s.xsave = try r.raw(s.xsave)
            s.xcrs = try r.raw(s.xcrs)
            s.debugRegs = try r.raw(s.debugRegs)
            s.lapic = try r.raw(s.lapic)
            for _ in 0..<(try r.count(itemSize: 12, limit: Int(SWL_MAX_MSR_INDICES))) {
                s.msrs.append((index: try r.u32(), value: try r.u64()))
            }
            s.events = try r.raw(s.events)
            s.mpState = try r.raw(s.mpState)
            s.tscKHz = try r.u32()
            vcpus.append(SavedVcpu(cpuid: cpuid, state: s))
        }
        var vm = VMState()
        vm.picMaster = try r.raw(vm.picMaster)
        vm.picSlave = try r.raw(vm.picSlave)
        vm.ioapic = try r.raw(vm.ioapic)
        vm.pit = try r.raw(vm.pit)
        vm.clock = try r.raw(vm.clock)
        let serial = Serial8250.SavedState(ier: try r.u8(), lcr: try r.u8(), mcr: try r.u8(), scratch: try r.u8(), dll: try r.u8(), dlm: try r.u8(),
                                           fifoEnabled: try r.bool(), thrInterruptPending: try r.bool())
        var transports: [VirtioMMIOTransport.SavedState] = []
        for _ in 0..<(try r.count(itemSize: 28, limit: MachineConfig.maximumVirtioDevices)) {
            var t = VirtioMMIOTransport.SavedState(status: try r.u32(), deviceFeaturesSel: try r.u32(), driverFeaturesSel: try r.u32(),
                                                   driverFeatures: try r.u64(), queueSel: try r.u32(), interruptStatus: try r.u32(), queues: [])
            for _ in 0..<(try r.count(itemSize: 31, limit: 8)) {
                t.queues.append(.init(size: try r.u16(), desc: try r.u64(), driver: try r.u64(), device: try r.u64(),
                                      ready: try r.bool(), nextAvail: try r.u16(), nextUsed: try r.u16()))
            }
            transports.append(t)
        }
        return MachineState(vcpus: vcpus, vm: vm, serial: serial, transports: transports)
    }
}

/// Writes a snapshot of a paused machine into a directory prepared before
/// the guest ran (its files open, the kernel and images hashed), so that
/// writing needs no path lookups from the sandboxed control thread.
public final class SnapshotWriter {
    public let directory: String
    private let stateFD: Int32
    private let memoryFD: Int32
    let kernel: FileIdentity
    let driveIdentities: [FileIdentity?]

    /// Creates `directory` (which must not exist) and its files, and hashes
    /// the kernel and every read-only or ephemeral drive of `config`.
    public init(directory: String, config: MachineConfig) throws(SnapshotError) {
        guard case let .linux(kernelPath, initrd, _) = config.payload, initrd == nil else {
            throw .unsupported("only a Linux kernel booted from a drive can be snapshotted (no initramfs)")
        }
        guard config.net == nil else { throw .unsupported("a machine with a network device cannot be snapshotted") }
        kernel = try FileIdentity.of(kernelPath)
        var ids: [FileIdentity?] = []
        for d in config.drives { ids.append(d.readOnly || d.ephemeral ? try FileIdentity.of(d.path) : nil) }
        driveIdentities = ids
        guard mkdir(directory, 0o755) == 0 else { throw .system(.last("mkdir(\(directory))")) }
        self.directory = directory
        stateFD = open(directory + "/" + Snapshot.stateFileName, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        memoryFD = open(directory + "/" + Snapshot.memoryFileName, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o444)
        guard stateFD >= 0, memoryFD >= 0 else {
            let e = SystemError.last("create \(directory)/*")
            close(stateFD)
            close(memoryFD)
            throw .system(e)
        }
    }

    deinit {
        close(stateFD)
        close(memoryFD)
    }

    /// Writes memory (zero pages left as holes), then the state, and syncs both.
    func write(manifest: SnapshotManifest, state: MachineState, memory: GuestMemory) throws(SnapshotError) {
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
