import CSwiftlet
import Glibc
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

/// The two ways a machine comes to be: `boot` loads a kernel into fresh
/// memory and points the boot vCPU at it; `restore` maps a snapshot's memory
/// and sets vCPUs and devices back to its state. Both open the host side of
/// every device before any VM work, so bad input fails first, and both end
/// in `Machine.init`, which attaches every device the same way.
extension Machine {
    /// Builds a fresh machine: VM, memory, kernel, boot structures, vCPUs, devices.
    public static func boot(_ config: MachineConfig) throws(VMMError) -> Machine {
        let kvm = try openKVM(config)
        let backends = try DeviceBackends(config: config, blocks: try openDrives(config))
        let vm = try createVM(kvm)
        let memory: GuestMemory
        do { memory = try GuestMemory(ranges: Layout.ramRanges(memoryBytes: config.memoryMiB << 20)) } catch { throw .memory(error) }
        let slots = try MemorySlotRegistration.start(vm: vm, memory: memory)
        // Whatever fails below, the helper thread is joined first (wait() is idempotent).
        defer { _ = slots.wait() }
        let cpu = try CPUSetup(kvm: kvm, config: config)
        let boot = try BootLoader.load(config: config, memory: memory,
                                       extraArguments: backends.kernelArguments + PVMQuirks.kernelArguments(isPVMHost: cpu.isPVMHost, template: cpu.template))
        let tables = (0..<config.vcpuCount).map { cpu.cpuidTable(vcpu: $0, of: config.vcpuCount) }
        var vcpus: [Vcpu] = []
        do throws(KVMError) {
            for id in 0..<config.vcpuCount {
                let vcpu = try vm.createVcpu(id: id)
                try VcpuSetup.configure(vcpu, cpuid: tables[id])
                if id == 0 {
                    if boot.longMode {
                        try VcpuSetup.configureBootProcessor(vcpu, entry: boot.entry)
                    } else {
                        try VcpuSetup.configureRealMode(vcpu, entry: boot.entry)
                    }
                }
                vcpus.append(vcpu)
            }
        } catch {
            throw .kvm(error)
        }
        if let e = slots.wait() { throw .kvm(e) }
        return try Machine(config: config, kvm: kvm, vm: vm, memory: memory, cpu: cpu, vcpus: vcpus, cpuidTables: tables,
                           backends: backends, memorySlotWaitMicros: slots.blockedNanos / 1000, restoredFrom: nil)
    }

    /// Builds a machine from `snapshot`: its memory, vCPUs and devices, after
    /// checking that `config` (see `Snapshot.machineConfig`), the kernel and
    /// the images are the ones it was taken with, and that this host's CPU
    /// can run what the guest saw.
    public static func restore(_ config: MachineConfig, from snapshot: Snapshot) throws(VMMError) -> Machine {
        do { try snapshot.check(config) } catch { throw .snapshot(error) }
        let kvm = try openKVM(config)
        let blocks = try openDrives(config)
        do { try snapshot.checkDrives(blocks) } catch { throw .snapshot(error) }
        let backends = try DeviceBackends(config: config, blocks: blocks)
        let vm = try createVM(kvm)
        let memory = try snapshotMemory(snapshot, config: config)
        let slots = try MemorySlotRegistration.start(vm: vm, memory: memory)
        defer { _ = slots.wait() }
        let cpu = try CPUSetup(kvm: kvm, config: config)
        let saved = snapshot.state.vcpus
        for id in 0..<config.vcpuCount {
            if let why = CPUIDCompatibility.mismatch(snapshot: saved[id].cpuid, host: cpu.cpuidTable(vcpu: id, of: config.vcpuCount)) {
                throw .snapshot(.hostCPU(why))
            }
        }
        var vcpus: [Vcpu] = []
        do throws(KVMError) {
            try vm.restoreState(snapshot.state.vm)
            for id in 0..<config.vcpuCount {
                let vcpu = try vm.createVcpu(id: id)
                // A restored guest goes on with the CPU it booted on.
                try vcpu.setCPUID(saved[id].cpuid)
                // Some MSRs (kvmclock, async PF, steal time) point KVM at
                // guest pages: their memory slot must exist first.
                if let e = slots.wait() { throw e }
                try vcpu.restoreState(saved[id].state)
                vcpus.append(vcpu)
            }
        } catch {
            throw .kvm(error)
        }
        if let e = slots.wait() { throw .kvm(e) }
        let machine = try Machine(config: config, kvm: kvm, vm: vm, memory: memory, cpu: cpu, vcpus: vcpus,
                                  cpuidTables: saved.prefix(config.vcpuCount).map { $0.cpuid }, backends: backends,
                                  memorySlotWaitMicros: slots.blockedNanos / 1000, restoredFrom: snapshot)
        do throws(TransportRestoreError) {
            for (transport, state) in zip(machine.transports, snapshot.state.transports) { try transport.restoreState(state) }
        } catch {
            switch error {
            case let .mismatch(why): throw .snapshot(.mismatch(why))
            case let .corrupt(why): throw .snapshot(.corrupt(why))
            }
        }
        machine.serial.restoreState(snapshot.state.serial)
        return machine
    }

    /// Puts `device` behind a virtio-mmio transport in window `slot`: its
    /// registers on the MMIO bus, each queue's QueueNotify an ioeventfd, its
    /// interrupt an irqfd on the slot's GSI.
    static func attachVirtioDevice(_ device: any VirtioDevice, slot: Int, memory: GuestMemory, vm: VirtualMachine,
                                   mmio: inout Bus) throws(VMMError) -> VirtioMMIOTransport {
        let transport: VirtioMMIOTransport
        do { transport = try VirtioMMIOTransport(device: device, memory: memory) } catch { throw .system(error) }
        let base = Devices.virtioWindow(slot)
        do { try mmio.insert(transport, base: base, size: VirtioMMIOTransport.windowSize) } catch { throw .bus(error) }
        do throws(KVMError) {
            for (q, notifier) in transport.notifiers.enumerated() {
                try vm.registerIOEventFD(notifier.fd, mmioAddress: base + VirtioMMIOTransport.Reg.queueNotify, length: 4, datamatch: UInt64(q))
            }
            try vm.registerIRQFD(transport.interrupt.fd, gsi: Devices.virtioGSI(slot))
        } catch {
            throw .kvm(error)
        }
        return transport
    }

    /// Opens `/dev/kvm` and checks `config` against what it allows.
    private static func openKVM(_ config: MachineConfig) throws(VMMError) -> Kvm {
        let kvm: Kvm
        do { kvm = try Kvm(path: config.kvmPath) } catch { throw .kvm(error) }
        try config.validate(maxVcpus: max(1, kvm.maxVcpus))
        return kvm
    }

    /// Opens (and locks) every drive image.
    private static func openDrives(_ config: MachineConfig) throws(VMMError) -> [BlockDevice] {
        var blocks: [BlockDevice] = []
        for drive in config.drives {
            do {
                blocks.append(try BlockDevice(path: drive.path, readOnly: drive.readOnly, ephemeral: drive.ephemeral, id: drive.id))
            } catch {
                throw .drive(drive.path, error)
            }
        }
        return blocks
    }

    /// A VM with its in-kernel irqchip and PIT, and no memory yet.
    private static func createVM(_ kvm: Kvm) throws(VMMError) -> VirtualMachine {
        do {
            let vm = try kvm.createVM()
            try vm.setTSSAddress(Layout.kvmTSS)
            if kvm.checkExtension(KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0 {
                try vm.setIdentityMapAddress(Layout.kvmIdentityMap)
            }
            try vm.createIRQChip()
            try vm.createPIT()
            return vm
        } catch {
            throw .kvm(error)
        }
    }

    /// A snapshot's memory file mapped private: pages are read in as the guest touches them.
    private static func snapshotMemory(_ snapshot: Snapshot, config: MachineConfig) throws(VMMError) -> GuestMemory {
        let file: OwnedFD
        do { file = try snapshot.openMemory() } catch { throw .snapshot(error) }
        // The mappings keep the file; the descriptor is not needed after mmap.
        let memory: GuestMemory
        do { memory = try GuestMemory(privateMappingOf: file.raw, ranges: snapshot.manifest.memoryRanges) } catch { throw .memory(error) }
        // Pages not yet read in come from the file: if it shrinks under the
        // mapping, touching one raises SIGBUS, in the VMM's own accesses to
        // guest memory (devices, instruction completion). That ends the
        // process with one line instead of a crash.
        let message = "swiftlet: error: the snapshot memory file \(snapshot.memoryPath) was cut short while the guest ran: its memory is lost\n"
        var starts = memory.regions.map { UnsafeMutableRawPointer?($0.host) }
        var sizes = memory.regions.map(\.size)
        guard swl_sigbus_guard(&starts, &sizes, Int32(starts.count), message, config.memoryLostExitStatus) == 0 else {
            throw .system(.last("sigaction(SIGBUS)"))
        }
        return memory
    }
}

/// The host side of each device, opened before any VM work: drive images
/// (opened and locked), the vsock listener (bound, so a path in use fails
/// early) and the TAP (attached, or created and addressed). If anything
/// later throws, each closes with its device (and an `auto` TAP vanishes).
struct DeviceBackends {
    let blocks: [BlockDevice]
    let vsock: VsockMuxer?
    let net: NetDevice?
    /// What the guest kernel is told: each virtio window, and a `--net auto` link's addresses.
    let kernelArguments: [String]

    init(config: MachineConfig, blocks: [BlockDevice]) throws(VMMError) {
        self.blocks = blocks
        if let v = config.vsock {
            do { vsock = try VsockMuxer(guestCID: v.guestCID, udsPath: v.udsPath, peers: v.peers) } catch { throw .vsock(error) }
        } else {
            vsock = nil
        }
        var netArguments: [String] = []
        if let n = config.net {
            do throws(NetError) {
                let tap: TapDevice
                switch n.backend {
                case let .tap(name): tap = try TapDevice.attach(name)
                case .auto: tap = try TapDevice.create()
                }
                do { net = try NetDevice(tap: tap, mac: n.mac ?? MACAddress.generate()) } catch { throw .system(error) }
                // The address again for swiftlet-init, which writes an image's /etc/hosts with it (`ip=` is the kernel's own).
                if let plan = tap.plan { netArguments += [plan.kernelArgument, "SWIFTLET_GUEST_IP=\(plan.guestString)"] }
            } catch {
                throw .net(error)
            }
        } else {
            net = nil
        }
        let count = blocks.count + (vsock == nil ? 0 : 1) + (net == nil ? 0 : 1)
        kernelArguments = (0..<count).map { i in
            "virtio_mmio.device=4K@0x\(String(Devices.virtioWindow(i), radix: 16)):\(Devices.virtioGSI(i))"
        } + netArguments
    }

    /// Every virtio device, in the order the kernel command line names their
    /// windows: drives, vsock, net.
    var virtioDevices: [any VirtioDevice] {
        blocks + (vsock.map { [$0] } ?? []) + (net.map { [$0] } ?? [])
    }
}

/// The CPU the guest gets: the template for this host, and what KVM offers.
struct CPUSetup {
    let isPVMHost: Bool
    let template: CPUTemplate
    let supportedCPUID: [kvm_cpuid_entry2]
    /// The MSRs a snapshot saves: what KVM lists.
    let msrIndices: [UInt32]

    init(kvm: Kvm, config: MachineConfig) throws(VMMError) {
        isPVMHost = HostKVM.isPVM
        switch config.cpuTemplate {
        case .auto: template = isPVMHost ? .pvmSafe : .host
        case .host: template = .host
        case .pvmSafe: template = .pvmSafe
        }
        do {
            supportedCPUID = try kvm.supportedCPUID()
            msrIndices = try kvm.msrIndexList()
        } catch {
            throw .kvm(error)
        }
    }

    /// What vCPU `index` of `count` sees through CPUID on this host.
    func cpuidTable(vcpu index: Int, of count: Int) -> [kvm_cpuid_entry2] {
        VcpuSetup.cpuidTable(index: index, cpuCount: count, supportedCPUID: supportedCPUID, template: template)
    }
}

/// Registers guest memory with KVM on a helper thread: that waits for an
/// SRCU grace period inside KVM (about 7 ms on nested PVM, whatever the
/// size), while set-up goes on loading the kernel and building the vCPUs.
///
/// `@unchecked Sendable`: the helper thread writes `error` before it exits;
/// the owner reads it, and the other fields, only after `pthread_join`.
final class MemorySlotRegistration: @unchecked Sendable {
    let vm: VirtualMachine
    let memory: GuestMemory
    private var thread: pthread_t?
    private var error: KVMError?
    /// How long the first `wait` blocked: the registration's cost on set-up's critical path.
    private(set) var blockedNanos: UInt64 = 0

    private init(vm: VirtualMachine, memory: GuestMemory) {
        self.vm = vm
        self.memory = memory
    }

    static func start(vm: VirtualMachine, memory: GuestMemory) throws(VMMError) -> MemorySlotRegistration {
        let registration = MemorySlotRegistration(vm: vm, memory: memory)
        do {
            registration.thread = try spawnThread(name: "memslots") { [registration] in
                do throws(KVMError) { try registration.vm.mapMemory(registration.memory) } catch { registration.error = error }
            }
        } catch {
            throw .system(error)
        }
        return registration
    }

    /// Joins the thread (once) and returns its error, if any.
    func wait() -> KVMError? {
        if let t = thread {
            let start = Clock.monotonicNanos()
            pthread_join(t, nil)
            blockedNanos = Clock.monotonicNanos() &- start
            thread = nil
        }
        return error
    }
}
