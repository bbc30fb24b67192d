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
    /// memory (an SRCU grace period: milliseconds on nested KVM; see MemorySlotRegistration).
    public var memorySlotWaitMicros: UInt64
    /// Exits that reached userspace, by reason, over all vCPUs.
    public var exits: ExitStats
    /// What the UART printed, when capture was on.
    public var console: [UInt8]
}

/// A microVM: KVM VM, guest memory with a kernel loaded, vCPUs and devices.
///
/// `Machine.boot` or `Machine.restore` (Builder.swift) does all the set-up
/// (nothing runs yet); `run` starts one thread per vCPU and waits for the
/// machine to end.
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

    /// The devices and their buses around the vCPUs and memory that `boot`
    /// or `restore` (Builder.swift) prepared: the serial port, the i8042,
    /// the boot timer, and every virtio device through `attachVirtioDevice`.
    init(config: MachineConfig, kvm: Kvm, vm: VirtualMachine, memory: GuestMemory, cpu: CPUSetup, vcpus: [Vcpu],
         cpuidTables: [[kvm_cpuid_entry2]], backends: DeviceBackends, memorySlotWaitMicros: UInt64,
         restoredFrom: Snapshot?) throws(VMMError) {
        self.config = config
        self.kvm = kvm
        self.vm = vm
        self.memory = memory
        self.vcpus = vcpus
        self.cpuidTables = cpuidTables
        self.memorySlotWaitMicros = memorySlotWaitMicros
        self.restoredFrom = restoredFrom
        isPVMHost = cpu.isPVMHost
        msrIndices = cpu.msrIndices
        vsock = backends.vsock
        net = backends.net
        driveCapacities = backends.blocks.map { $0.capacityBytes }

        let latch: ExitLatch
        do { latch = try ExitLatch() } catch { throw .system(error) }
        let output = ConsoleOutput(fd: config.consoleOutputFD, capture: config.captureConsole, captureLimit: config.captureConsoleLimit)
        self.output = output
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
        var transports: [VirtioMMIOTransport] = []
        for (slot, device) in backends.virtioDevices.enumerated() {
            transports.append(try Self.attachVirtioDevice(device, slot: slot, memory: memory, vm: vm, mmio: &mmio))
        }
        self.transports = transports
        context = MachineContext(pioBus: pio, mmioBus: mmio, memory: memory, emulationFixups: cpu.isPVMHost, latch: latch, resetRequest: resetRequest)
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
        var signals: TerminationSignals?
        if config.handleTerminationSignals {
            do { signals = try TerminationSignals() } catch { throw .system(error) }
        }
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

        waitForEnd(runners: runners, signals: signals)

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
    private func waitForEnd(runners: [VcpuRunner], signals: TerminationSignals?) {
        let latch = context.latch
        let kick = swl_sigrtmin()
        let deadline = config.timeoutSeconds.map { Clock.deadline(afterSeconds: $0) }
        var fds = [pollfd(fd: latch.event.fd, events: Int16(POLLIN), revents: 0)]
        let signalFD = signals?.fd ?? -1
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
                let signo = signals?.take() ?? 0
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
