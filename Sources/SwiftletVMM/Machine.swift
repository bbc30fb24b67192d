import CSwiftlet
import Glibc
import Synchronization
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import SwiftletX86

/// What a finished run reports.
public struct RunReport: Sendable {
    /// How the machine ended.
    public var exit: MachineExit
    /// Microseconds from process start to the guest's boot-timer write, if it came.
    public var bootTimerMicros: UInt64?
    /// Microseconds from process start to the first `KVM_RUN`.
    public var firstRunMicros: UInt64
    /// CPU time the process had used at the first `KVM_RUN`, in microseconds.
    public var firstRunCPUMicros: UInt64
    /// Microseconds from process start to the first exit to userspace.
    public var firstExitMicros: UInt64
    /// Of `firstRunMicros`, how long set-up waited for KVM to register guest
    /// memory (an SRCU grace period: milliseconds on nested KVM; see init).
    public var memorySlotWaitMicros: UInt64
    /// Exits that reached userspace, by reason, over all vCPUs.
    public var exits: ExitStats
    /// What the UART printed, when capture was on.
    public var console: [UInt8]
}

/// A microVM: KVM VM, guest memory with a kernel loaded, vCPUs and devices.
///
/// `init` does all the setup (nothing runs yet); `run` starts one thread per
/// vCPU and waits for the machine to end.
///
/// `@unchecked Sendable`: its one mutable field, `pausedVcpus`, is written
/// and read by the thread that calls `run` and `writeSnapshot`.
public final class Machine: @unchecked Sendable {
    public let config: MachineConfig
    let kvm: Kvm
    let vm: VirtualMachine
    let memory: GuestMemory
    let vcpus: [Vcpu]
    let serial: Serial8250
    let output: ConsoleOutput
    /// How long set-up blocked on the memory-slot helper thread.
    let memorySlotWaitMicros: UInt64
    let context: MachineContext
    let transports: [VirtioMMIOTransport]
    /// The vsock device, when configured (its transport is the last of `transports`).
    let vsock: VsockMuxer?
    /// The network device, when configured (after the vsock device).
    let net: NetDevice?
    let bootTimerMicros = BootTimerRecord()
    /// The host has nested PVM KVM.
    public let isPVMHost: Bool
    /// The snapshot this machine resumes from, if it was restored.
    public let restoredFrom: Snapshot?
    /// Each vCPU's CPUID table (kept for a snapshot).
    let cpuidTables: [[kvm_cpuid_entry2]]
    /// Each drive's size in bytes.
    let driveCapacities: [UInt64]
    /// The MSRs a snapshot saves: what KVM lists.
    let msrIndices: [UInt32]
    /// The vCPUs' states, captured by their threads when the machine paused.
    private(set) var pausedVcpus: [VcpuState?] = []

    /// Builds the machine: VM, memory, kernel, boot structures, vCPUs, devices.
    /// With `snapshot`, memory, vCPUs and devices come from it instead, after
    /// checking that `config` (see `Snapshot.machineConfig`), the kernel and
    /// the images are the ones it was taken with, and that this host's CPU
    /// can run what the guest saw.
    public init(config: MachineConfig, restoring snapshot: Snapshot? = nil) throws(VMMError) {
        self.config = config
        restoredFrom = snapshot
        if let snapshot {
            do { try snapshot.check(config) } catch { throw .snapshot(error) }
        }
        do {
            kvm = try Kvm(path: config.kvmPath)
        } catch {
            throw .kvm(error)
        }
        try config.validate(maxVcpus: max(1, kvm.maxVcpus))
        isPVMHost = HostKVM.isPVM

        // Drive images are opened (and locked) first: bad input fails before any VM work.
        var blocks: [BlockDevice] = []
        for drive in config.drives {
            do {
                blocks.append(try BlockDevice(path: drive.path, readOnly: drive.readOnly, ephemeral: drive.ephemeral, id: drive.id))
            } catch {
                throw .drive(drive.path, error)
            }
        }
        if let snapshot {
            do { try snapshot.checkDrives(blocks) } catch { throw .snapshot(error) }
        }
        // The vsock listener is bound now too, so a path in use fails early.
        var vsock: VsockMuxer?
        if let v = config.vsock {
            do {
                vsock = try VsockMuxer(guestCID: v.guestCID, udsPath: v.udsPath, peers: v.peers)
            } catch {
                throw .vsock(error)
            }
        }
        self.vsock = vsock
        driveCapacities = blocks.map { $0.sectors * UInt64(VirtioBlock.sectorSize) }
        if let snapshot {
            for (capacity, saved) in zip(driveCapacities, snapshot.manifest.drives) where capacity != saved.capacityBytes {
                throw .snapshot(.mismatch("drive \(saved.config.path) has \(capacity) bytes; it had \(saved.capacityBytes) in the snapshot"))
            }
        }
        // The TAP is attached (or created and addressed) now too, so a missing
        // or busy TAP fails before any VM work; if anything below throws, the
        // TAP closes with the device (and an `auto` one vanishes).
        var net: NetDevice?
        var netArguments: [String] = []
        if let n = config.net {
            do throws(NetError) {
                let tap: TapDevice
                switch n.backend {
                case let .tap(name): tap = try TapDevice.attach(name)
                case .auto: tap = try TapDevice.create()
                }
                do {
                    net = try NetDevice(tap: tap, mac: n.mac ?? MACAddress.generate())
                } catch {
                    throw .system(error)
                }
                if let plan = tap.plan { netArguments.append(plan.kernelArgument) }
            } catch {
                throw .net(error)
            }
        }
        self.net = net
        let virtioCount = blocks.count + (vsock == nil ? 0 : 1) + (net == nil ? 0 : 1)
        let virtioArguments = (0..<virtioCount).map { i in
            "virtio_mmio.device=4K@0x\(String(Devices.virtioWindow(i), radix: 16)):\(Devices.virtioGSI(i))"
        }

        do {
            vm = try kvm.createVM()
            try vm.setTSSAddress(Layout.kvmTSS)
            if kvm.checkExtension(KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0 {
                try vm.setIdentityMapAddress(Layout.kvmIdentityMap)
            }
            try vm.createIRQChip()
            try vm.createPIT()
        } catch {
            throw .kvm(error)
        }

        memory = try Machine.guestMemory(config: config, snapshot: snapshot)
        // Registering the memory slot waits for an SRCU grace period inside
        // KVM (about 7 ms on nested PVM, whatever the size), so it runs on a
        // helper thread while this one loads the kernel and builds the vCPUs.
        let slots = MemorySlotRegistration(vm: vm, memory: memory)
        do { try slots.start() } catch { throw .system(error) }

        let template: CPUTemplate
        switch config.cpuTemplate {
        case .auto: template = isPVMHost ? .pvmSafe : .host
        case .host: template = .host
        case .pvmSafe: template = .pvmSafe
        }
        // Whatever fails below, the helper thread is joined first (wait() is idempotent).
        defer { _ = slots.wait() }
        let boot = snapshot == nil
            ? try BootLoader.load(config: config, memory: memory,
                                  extraArguments: virtioArguments + netArguments + PVMQuirks.kernelArguments(isPVMHost: isPVMHost, template: template))
            : nil
        var vcpus: [Vcpu] = []
        var tables: [[kvm_cpuid_entry2]] = []
        let supported: [kvm_cpuid_entry2]
        do {
            supported = try kvm.supportedCPUID()
            msrIndices = try kvm.msrIndexList()
        } catch {
            throw .kvm(error)
        }
        for id in 0..<config.vcpuCount {
            let table = VcpuSetup.cpuidTable(index: id, cpuCount: config.vcpuCount, supportedCPUID: supported, template: template)
            if let saved = snapshot?.state.vcpus[id], let why = CPUIDCompatibility.mismatch(snapshot: saved.cpuid, host: table) {
                throw .snapshot(.hostCPU(why))
            }
            // A restored guest goes on with the CPU it booted on.
            tables.append(snapshot?.state.vcpus[id].cpuid ?? table)
        }
        do throws(KVMError) {
            if let snapshot { try vm.restoreState(snapshot.state.vm) }
            for id in 0..<config.vcpuCount {
                let vcpu = try vm.createVcpu(id: id)
                if let saved = snapshot?.state.vcpus[id] {
                    try vcpu.setCPUID(saved.cpuid)
                    // Some MSRs (kvmclock, async PF, steal time) point KVM at
                    // guest pages: their memory slot must exist first.
                    if let e = slots.wait() { throw e }
                    try vcpu.restoreState(saved.state)
                } else {
                    try VcpuSetup.configure(vcpu, cpuid: tables[id])
                }
                if id == 0, let boot {
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
        self.vcpus = vcpus
        cpuidTables = tables
        if let e = slots.wait() { throw .kvm(e) }
        memorySlotWaitMicros = slots.blockedNanos / 1000

        // Devices.
        let latch: ExitLatch
        do { latch = try ExitLatch() } catch { throw .system(error) }
        let output = ConsoleOutput(fd: config.consoleOutputFD, capture: config.captureConsole, captureLimit: config.captureConsoleLimit)
        self.output = output
        let vm = self.vm
        serial = Serial8250(output: { output.put($0) }, raiseInterrupt: { try? vm.pulseIRQ(Devices.serialIRQ) })
        var pio = Bus()
        var mmio = Bus()
        let resetRequest = ResetRequest()
        let record = bootTimerMicros
        do {
            try pio.insert(serial, base: Devices.serialPort, size: 8)
            try pio.insert(I8042 { resetRequest.set() }, base: Devices.i8042Port, size: 5)
            try mmio.insert(BootTimer { wall, _ in record.set(wall) }, base: Layout.bootTimer, size: 0x1000)
        } catch {
            throw .bus(error)
        }
        // Every virtio device goes through the one attach path, in the order
        // the command line names their windows (drives, vsock, net).
        let devices: [any VirtioDevice] = blocks + (vsock.map { [$0] } ?? []) + (net.map { [$0] } ?? [])
        var transports: [VirtioMMIOTransport] = []
        for (i, device) in devices.enumerated() {
            transports.append(try Self.attachVirtioDevice(device, slot: i, memory: memory, vm: vm, mmio: &mmio))
        }
        self.transports = transports
        if let snapshot {
            do throws(TransportRestoreError) {
                for (t, saved) in zip(transports, snapshot.state.transports) { try t.restoreState(saved) }
            } catch {
                switch error {
                case let .mismatch(why): throw .snapshot(.mismatch(why))
                case let .corrupt(why): throw .snapshot(.corrupt(why))
                }
            }
            serial.restoreState(snapshot.state.serial)
        }
        context = MachineContext(pioBus: pio, mmioBus: mmio, memory: memory, emulationFixups: isPVMHost, latch: latch, resetRequest: resetRequest)
    }

    /// Fresh anonymous guest RAM, or a snapshot's memory file mapped private.
    private static func guestMemory(config: MachineConfig, snapshot: Snapshot?) throws(VMMError) -> GuestMemory {
        guard let snapshot else {
            do { return try GuestMemory(ranges: Layout.ramRanges(memoryBytes: config.memoryMiB << 20)) } catch { throw .memory(error) }
        }
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

    /// The TAP device's name, when the machine has a network device.
    public var netTapName: String? { net?.tap?.name }
    /// The host and guest addresses of a `--net auto` link.
    public var netAddresses: NetAddressPlan? { net?.tap?.plan }
    /// The guest's MAC address, when the machine has a network device.
    public var netMAC: MACAddress? { net?.mac }
    /// Times the guest's driver reset the vsock device (0 without one).
    public var vsockDriverResets: Int { vsock?.statistics.driverResets ?? 0 }

    /// Closes the vsock listener and removes its socket file at once, rather
    /// than whenever the last reference to the device goes.
    deinit { vsock?.close() }

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

    /// The transport `device` sits behind.
    func transport(of device: any VirtioDevice) -> VirtioMMIOTransport? {
        transports.first { $0.device === device }
    }

    /// Runs the machine until it ends, and reports how.
    public func run() throws(VMMError) -> RunReport {
        guard swl_install_empty_handler(swl_sigrtmin()) == 0 else { throw .system(.last("sigaction(SIGRTMIN)")) }
        let kick = swl_sigrtmin()
        // Threads inherit the mask: only the main thread takes SIGINT/SIGTERM,
        // through a signalfd, and vCPU threads unblock only the kick signal.
        var signalFD: Int32 = -1
        if config.handleTerminationSignals {
            signalFD = swl_signalfd_termination()
            guard signalFD >= 0 else { throw .system(.last("signalfd")) }
        }
        defer { if signalFD >= 0 { close(signalFD) } }
        _ = swl_block_signal(kick)

        var console: ConsoleInput?
        if config.consoleInput {
            let latch = context.latch
            do {
                console = try ConsoleInput(serial: serial, inputFD: config.consoleInputFD) { latch.finish(.stopped("console escape (Ctrl-A x)")) }
                try console?.start()
            } catch {
                throw .system(error)
            }
        }
        defer { console?.stop() }

        let loop: EventLoop
        do {
            loop = try EventLoop()
            for transport in transports {
                for q in transport.notifiers.indices {
                    try loop.add(transport.notifiers[q].fd) { transport.serve(queue: q) }
                }
            }
            // The vsock and net devices' own fds: their handlers serve queues
            // through their transport.
            if let vsock, let transport = transport(of: vsock) { try loop.add(vsock.pollFD) { vsock.handlePollEvents(transport) } }
            if let net, let transport = transport(of: net) { try loop.add(net.pollFD) { net.handleTapReadable(transport) } }
            try loop.start()
        } catch {
            throw .system(error)
        }
        defer { loop.stop() }
        // A restored guest's vsock connections led to a host that is gone:
        // the driver drops them on TRANSPORT_RESET, and the agent reconnects.
        if restoredFrom != nil, let vsock, let transport = transport(of: vsock) { vsock.transportReset(transport) }

        let msrIndices = self.msrIndices
        let runners = vcpus.map { VcpuRunner(vcpu: $0, context: context, msrIndices: msrIndices) }
        var threads: [pthread_t] = []
        // Each vCPU thread installs its own filter as it starts (spawnThread),
        // then waits here until the main thread has installed its own.
        let gate = StartGate()
        for r in runners {
            do {
                threads.append(try spawnThread(name: "vcpu\(r.vcpu.id)") { gate.pass(); r.run() })
            } catch {
                context.latch.finish(.vmmError("\(error)"))
                break
            }
        }
        ThreadSandbox.guestStart?()
        gate.open()

        waitForEnd(runners: runners, signalFD: signalFD)

        for r in runners {
            r.stopRequested.store(true, ordering: .releasing)
            r.vcpu.kick(signal: kick)
        }
        for t in threads { pthread_join(t, nil) }
        pausedVcpus = runners.map(\.pausedState)

        var stats = ExitStats()
        for r in runners { stats.add(r.stats) }
        return RunReport(
            exit: context.latch.result ?? .vmmError("no exit recorded"),
            bootTimerMicros: bootTimerMicros.value,
            firstRunMicros: context.firstRunMicros.load(ordering: .relaxed),
            firstRunCPUMicros: context.firstRunCPUMicros.load(ordering: .relaxed),
            firstExitMicros: context.firstExitMicros.load(ordering: .relaxed),
            memorySlotWaitMicros: memorySlotWaitMicros,
            exits: stats,
            console: output.captured
        )
    }

    /// A restored machine held before it runs (`run --start-fd`, the job
    /// runner's warm pool): sets the kvmclock back to the snapshot's, so
    /// the guest does not see the wait as time that passed (every timer
    /// due at once, under an emulated guest kernel, costs hundreds of ms).
    /// Call before `run`; a booted machine has nothing to rewind.
    public func rewindClock() throws(VMMError) {
        guard let snapshot = restoredFrom else { return }
        do { try vm.setClock(snapshot.state.vm.clock.clock) } catch { throw .kvm(error) }
    }

    /// Pauses the machine from any thread, for a snapshot: every vCPU thread
    /// completes its pending I/O, saves its state and ends, and `run`
    /// returns `.paused`. Then `writeSnapshot` can write it.
    public func pause() {
        context.latch.finish(.paused)
    }

    /// Ends the machine from any thread: `run` returns `.stopped(reason)`
    /// unless the machine already ended some other way.
    public func stop(_ reason: String) {
        context.latch.finish(.stopped(reason))
    }

    /// Waits for the latch, a termination signal, the timeout, or every vCPU
    /// halting for good (Linux's power-off without ACPI), probing the vCPUs
    /// every `haltProbeMillis`.
    private func waitForEnd(runners: [VcpuRunner], signalFD: Int32) {
        let latch = context.latch
        let kick = swl_sigrtmin()
        let deadline = config.timeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
        var fds = [pollfd(fd: latch.event.fd, events: Int16(POLLIN), revents: 0)]
        if signalFD >= 0 { fds.append(pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0)) }
        var probe: UInt64 = 0
        var deadRounds = 0
        while latch.result == nil {
            var wait = Int32(config.haltProbeMillis)
            if let d = deadline {
                let now = Clock.monotonicNanos()
                if now >= d {
                    latch.finish(.stopped("timeout after \(config.timeoutSeconds ?? 0) s"))
                    break
                }
                wait = min(wait, Int32((d - now) / 1_000_000) + 1)
            }
            let n = poll(&fds, nfds_t(fds.count), wait)
            if n > 0 && fds.count > 1 && fds[1].revents != 0 {
                let signo = swl_signalfd_read(signalFD)
                latch.finish(.stopped("signal \(signo)"))
                break
            }
            if latch.result != nil { break }
            // Collect the previous probe's answers, then send the next probe.
            if probe > 0 {
                let answered = runners.allSatisfy { $0.probeAnswered.load(ordering: .acquiring) == probe }
                let dead = answered && runners.allSatisfy { $0.probeDead.load(ordering: .relaxed) }
                deadRounds = dead ? deadRounds + 1 : 0
                // Two probes in a row rule out a vCPU caught between `cli` and the NMI that wakes it.
                if deadRounds >= 2 {
                    latch.finish(.poweredOff)
                    break
                }
            }
            probe += 1
            for r in runners {
                r.probeRequest.store(probe, ordering: .releasing)
                r.vcpu.kick(signal: kick)
            }
        }
    }
}

/// Fixed legacy device addresses.
public enum Devices {
    public static let serialPort: UInt64 = 0x3f8
    public static let serialIRQ: UInt32 = 4
    public static let i8042Port: UInt64 = 0x60
    /// virtio-mmio devices take GSIs from 5 up (below: the legacy ISA ones in use).
    public static let firstVirtioGSI: UInt32 = 5

    /// The MMIO window of virtio device `index`: 4 KiB each, after the boot timer.
    public static func virtioWindow(_ index: Int) -> UInt64 {
        Layout.firstVirtioMMIO + UInt64(index) * VirtioMMIOTransport.windowSize
    }

    public static func virtioGSI(_ index: Int) -> UInt32 { firstVirtioGSI + UInt32(index) }
}

/// The boot-timer value, written once by a vCPU thread.
final class BootTimerRecord: Sendable {
    private let stored = Atomic<UInt64>(0)
    func set(_ micros: UInt64) { _ = stored.compareExchange(expected: 0, desired: max(1, micros), ordering: .relaxed) }
    var value: UInt64? { let v = stored.load(ordering: .relaxed); return v == 0 ? nil : v }
}

/// Set by the i8042 when the guest pulses reset; the vCPU that wrote the
/// command classifies it (see `VcpuRunner.classifyReset`).
final class ResetRequest: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// Registers guest memory with KVM on a helper thread (see `Machine.init`).
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

    init(vm: VirtualMachine, memory: GuestMemory) {
        self.vm = vm
        self.memory = memory
    }

    func start() throws(SystemError) {
        thread = try spawnThread(name: "memslots") { [self] in
            do throws(KVMError) { try vm.mapMemory(memory) } catch { self.error = error }
        }
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
