import SwiftletPersist

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

extension SnapshotManifest: PersistentState {
    public func save(to w: inout StateWriter) {
        w.string(swiftletVersion)
        w.u64(createdNanos)
        w.u64(guestClockNanos)
        w.u32(UInt32(memoryMiB))
        w.u32(UInt32(vcpuCount))
        w.string(cpuTemplate.rawValue)
        w.string(cmdline)
        w.string(kernelPath)
        kernel.save(to: &w)
        w.u32(UInt32(drives.count))
        for d in drives {
            w.string(d.config.path)
            w.bool(d.config.readOnly)
            w.bool(d.config.ephemeral)
            w.bool(d.config.id != nil)
            if let id = d.config.id { w.string(id) }
            w.u64(d.capacityBytes)
            w.bool(d.identity != nil)
            d.identity?.save(to: &w)
        }
        w.bool(vsockCID != nil)
        w.u32(vsockCID ?? 0)
        w.u32(UInt32(memoryRanges.count))
        for r in memoryRanges {
            w.u64(r.base)
            w.u64(UInt64(r.size))
        }
    }

    public init(from r: inout StateReader) throws(StateError) {
        swiftletVersion = try r.string()
        createdNanos = try r.u64()
        guestClockNanos = try r.u64()
        memoryMiB = Int(try r.u32())
        vcpuCount = Int(try r.u32())
        let templateName = try r.string()
        guard let template = CPUTemplateChoice(rawValue: templateName) else { throw StateError("unknown CPU template \(templateName)") }
        cpuTemplate = template
        cmdline = try r.string()
        kernelPath = try r.string(limit: 4096)
        kernel = try FileIdentity(from: &r)
        drives = []
        for _ in 0..<(try r.count(itemSize: 8, limit: MachineConfig.maximumVirtioDevices)) {
            let path = try r.string(limit: 4096)
            let readOnly = try r.bool()
            let ephemeral = try r.bool()
            let id = try r.bool() ? try r.string(limit: 20) : nil
            let capacity = try r.u64()
            let identity = try r.bool() ? try FileIdentity(from: &r) : nil
            drives.append(.init(config: DriveConfig(path: path, readOnly: readOnly, ephemeral: ephemeral, id: id), capacityBytes: capacity, identity: identity))
        }
        let hasVsock = try r.bool()
        let cid = try r.u32()
        vsockCID = hasVsock ? cid : nil
        memoryRanges = []
        for _ in 0..<(try r.count(itemSize: 16, limit: 8)) {
            let base = try r.u64()
            let size = try r.u64()
            guard size > 0, size <= 1 << 46 else { throw StateError("a memory range of \(size) bytes") }
            memoryRanges.append((base, Int(size)))
        }
    }
}
