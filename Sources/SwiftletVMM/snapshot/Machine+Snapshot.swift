import CSwiftlet
import Glibc
import SwiftletKVM
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

extension Machine {
    /// Writes the paused machine (see `pause`) through `writer`: the vCPUs'
    /// states their threads saved, then the irqchip, PIT and clock, the
    /// devices, and guest memory. Call it after `run` returned `.paused`.
    /// `guestClockNanos` is the guest's CLOCK_MONOTONIC at the pause, when known (0 if not).
    public func writeSnapshot(_ writer: SnapshotWriter, guestClockNanos: UInt64 = 0) throws(SnapshotError) {
        guard context.latch.result == .paused else {
            throw .unsupported("the machine was not paused (\(context.latch.result.map { "\($0)" } ?? "still running"))")
        }
        let states = pausedVcpus.compactMap { $0 }
        guard states.count == vcpus.count else { throw .unsupported("not every vCPU saved its state") }
        guard case let .linux(kernelPath, _, cmdline) = config.payload else {
            throw .unsupported("only a Linux guest can be snapshotted")
        }
        let vmState: VMState
        do { vmState = try vm.saveState() } catch { throw .kvm(error) }
        let state = MachineState(
            vcpus: zip(cpuidTables, states).map { SavedVcpu(cpuid: $0, state: $1) },
            vm: vmState,
            serial: serial.saveState(),
            transports: transports.map { $0.saveState() })
        let template: CPUTemplateChoice = config.cpuTemplate == .auto ? (isPVMHost ? .pvmSafe : .host) : config.cpuTemplate
        let manifest = SnapshotManifest(
            swiftletVersion: SwiftletVersion.string,
            createdNanos: Clock.realtimeNanos(),
            guestClockNanos: guestClockNanos,
            memoryMiB: config.memoryMiB,
            vcpuCount: config.vcpuCount,
            cpuTemplate: template,
            cmdline: cmdline,
            kernelPath: kernelPath,
            kernel: writer.kernel,
            drives: config.drives.enumerated().map { i, d in
                SnapshotManifest.Drive(config: d, capacityBytes: driveCapacities[i], identity: writer.driveIdentities[i])
            },
            vsockCID: config.vsock?.guestCID,
            memoryRanges: memory.regions.map { (base: $0.guestBase, size: $0.size) })
        try writer.write(manifest: manifest, state: state, memory: memory)
    }
}

extension Snapshot {
    /// The machine this snapshot restores into: its memory, vCPUs, CPU
    /// template, drives and vsock device. The caller adds what belongs to
    /// the run: console, vsock socket path (`vsockPath`), and may point a
    /// drive at a copy of its image.
    public func machineConfig(vsockPath: String?) -> MachineConfig {
        let m = manifest
        var config = MachineConfig(kernelPath: m.kernelPath, cmdline: m.cmdline)
        config.memoryMiB = m.memoryMiB
        config.vcpuCount = m.vcpuCount
        config.cpuTemplate = m.cpuTemplate
        config.drives = m.drives.map(\.config)
        if let cid = m.vsockCID { config.vsock = VsockConfig(guestCID: cid, udsPath: vsockPath ?? "") }
        return config
    }

    /// Checks that `config` describes the machine this snapshot was taken
    /// of, and that its kernel and pinned images have the same content.
    func check(_ config: MachineConfig) throws(SnapshotError) {
        let m = manifest
        guard case let .linux(kernelPath, initrd, _) = config.payload, initrd == nil else {
            throw .mismatch("a snapshot restores a Linux guest booted from a drive")
        }
        guard config.memoryMiB == m.memoryMiB, config.vcpuCount == m.vcpuCount else {
            throw .mismatch("the snapshot has \(m.memoryMiB) MiB and \(m.vcpuCount) vCPUs; asked for \(config.memoryMiB) MiB and \(config.vcpuCount)")
        }
        let expected = Layout.ramRanges(memoryBytes: m.memoryMiB << 20)
        guard expected.count == m.memoryRanges.count,
              zip(expected, m.memoryRanges).allSatisfy({ $0.base == $1.base && $0.size == $1.size }) else {
            throw .corrupt("its memory layout is not the one Swiftlet gives \(m.memoryMiB) MiB")
        }
        guard config.cpuTemplate == m.cpuTemplate || config.cpuTemplate == .auto else {
            throw .mismatch("the snapshot's CPU template is \(m.cpuTemplate.rawValue)")
        }
        guard config.net == nil else { throw .mismatch("a restored machine cannot have a network device (it was not in the snapshot)") }
        guard config.drives.count == m.drives.count else {
            throw .mismatch("the snapshot has \(m.drives.count) drives; asked for \(config.drives.count)")
        }
        for (d, saved) in zip(config.drives, m.drives) {
            guard d.readOnly == saved.config.readOnly, d.ephemeral == saved.config.ephemeral, d.id == saved.config.id else {
                throw .mismatch("drive \(d.path) is not attached as it was in the snapshot")
            }
        }
        guard (config.vsock == nil) == (m.vsockCID == nil), config.vsock?.guestCID == m.vsockCID else {
            throw .mismatch("the vsock device differs from the snapshot's")
        }
        guard state.vcpus.count == m.vcpuCount,
              state.transports.count == m.drives.count + (m.vsockCID == nil ? 0 : 1) else {
            throw .corrupt("its device states do not match its machine")
        }
        try m.kernel.check(kernelPath, what: "kernel")
        // The drive images are checked on the descriptors their devices
        // opened (`checkDrives`), not here by path.
    }

    /// Checks each drive image, on the descriptor its device reads, against
    /// the identity the snapshot recorded (read-only and ephemeral drives).
    /// Each drive must also have the size the guest saw.
    func checkDrives(_ blocks: [BlockDevice]) throws(SnapshotError) {
        for (block, saved) in zip(blocks, manifest.drives) {
            if let identity = saved.identity { try identity.check(fd: block.imageFD, path: block.path, what: "drive image") }
            let capacity = block.capacityBytes
            guard capacity == saved.capacityBytes else {
                throw .mismatch("drive \(saved.config.path) has \(capacity) bytes; it had \(saved.capacityBytes) in the snapshot")
            }
        }
    }
}
