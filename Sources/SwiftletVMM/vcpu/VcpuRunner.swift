import CSwiftlet
import Glibc
import Synchronization
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletSys

/// Everything the vCPU threads share: the buses, guest memory and the exit latch.
final class MachineContext: Sendable {
    let pioBus: Bus
    let mmioBus: Bus
    let memory: GuestMemory
    /// Complete the instructions PVM's emulator fails on (nested PVM hosts only).
    let emulationFixups: Bool
    let latch: ExitLatch
    /// Set by the i8042 when the guest pulses reset.
    let resetRequest: ResetRequest
    /// Microseconds since process start of the first KVM_RUN, and of the first exit.
    let firstRunMicros = Atomic<UInt64>(0)
    let firstExitMicros = Atomic<UInt64>(0)
    let firstRunCPUMicros = Atomic<UInt64>(0)

    init(pioBus: Bus, mmioBus: Bus, memory: GuestMemory, emulationFixups: Bool, latch: ExitLatch, resetRequest: ResetRequest) {
        self.resetRequest = resetRequest
        self.pioBus = pioBus
        self.mmioBus = mmioBus
        self.memory = memory
        self.emulationFixups = emulationFixups
        self.latch = latch
    }
}

/// Records the first reason the machine ended, and wakes the waiting thread.
final class ExitLatch: Sendable {
    private let exit = Mutex<MachineExit?>(nil)
    /// The main thread polls it; signalled once the machine ends.
    let event: EventFD

    init() throws(SystemError) {
        event = try EventFD()
    }

    /// Records `reason` unless the machine already ended. Returns true if it was first.
    @discardableResult
    func finish(_ reason: MachineExit) -> Bool {
        let first = exit.withLock { e in
            if e != nil { return false }
            e = reason
            return true
        }
        if first { event.signal() }
        return first
    }

    var result: MachineExit? { exit.withLock { $0 } }
}

/// Runs one vCPU on its own thread: `KVM_RUN`, dispatch the exit, repeat.
final class VcpuRunner: Sendable {
    let vcpu: Vcpu
    let context: MachineContext
    /// Set by the main thread to stop this vCPU; sticky.
    let stopRequested = Atomic<Bool>(false)
    /// Incremented by the main thread to ask "are you halted for good?".
    let probeRequest = Atomic<UInt64>(0)
    /// The last probe this thread answered, and its answer.
    let probeAnswered = Atomic<UInt64>(0)
    let probeDead = Atomic<Bool>(false)
    /// Exit counts, read by the main thread only after this thread ended.
    nonisolated(unsafe) var stats = ExitStats()
    /// The MSRs to save when the machine pauses.
    let msrIndices: [UInt32]
    /// This vCPU's state when the machine paused; read after the thread ended.
    nonisolated(unsafe) var pausedState: VcpuState?

    init(vcpu: Vcpu, context: MachineContext, msrIndices: [UInt32] = []) {
        self.vcpu = vcpu
        self.context = context
        self.msrIndices = msrIndices
    }

    /// The vCPU loop. Returns when the machine ends or the thread is told to stop.
    func run() {
        vcpu.thread.store(UInt(bitPattern: Int(bitPattern: UInt(pthread_self()))), ordering: .releasing)
        _ = swl_unblock_signal(swl_sigrtmin())
        if vcpu.id == 0 {
            context.firstRunMicros.store(Clock.microsSinceStart(), ordering: .relaxed)
            context.firstRunCPUMicros.store(Clock.processCPUNanos() / 1000, ordering: .relaxed)
        }
        var first = vcpu.id == 0
        var spin = SpinDetector()
        defer { if context.latch.result == .paused { capture() } }
        while !stopRequested.load(ordering: .acquiring) {
            let exit: VcpuExit
            do {
                exit = try vcpu.runOnce()
            } catch {
                context.latch.finish(.vmmError("vCPU \(vcpu.id): \(error)"))
                return
            }
            if first {
                context.firstExitMicros.store(Clock.microsSinceStart(), ordering: .relaxed)
                first = false
            }
            if let ending = handle(exit) ?? spin.check(exit, kicks: vcpu.kicks.load(ordering: .acquiring), vcpu: vcpu.id) {
                context.latch.finish(ending)
                return
            }
        }
    }

    /// Saves this vCPU's state for a snapshot, on its own thread, once the
    /// last exit's port or MMIO read has been completed into the registers.
    private func capture() {
        do {
            try vcpu.completePendingIO()
            pausedState = try vcpu.saveState(msrIndices: msrIndices)
        } catch {
            pausedState = nil
            context.latch.finish(.vmmError("vCPU \(vcpu.id): saving its state: \(error)"))
        }
    }

    /// Handles one exit; returns how the machine ends, or nil to keep running.
    func handle(_ exit: VcpuExit) -> MachineExit? {
        switch exit {
        case let .io(port, isWrite, data):
            stats.io += 1
            if isWrite {
                context.pioBus.write(UInt64(port), UnsafeRawBufferPointer(data))
                if context.resetRequest.isSet { return classifyReset() }
            } else {
                context.pioBus.read(UInt64(port), data)
            }
            return nil
        case let .mmio(address, isWrite, data):
            stats.mmio += 1
            if isWrite { context.mmioBus.write(address, UnsafeRawBufferPointer(data)) } else { context.mmioBus.read(address, data) }
            return nil
        case .interrupted:
            stats.interrupted += 1
            answerProbe()
            return nil
        case .shutdown:
            return .tripleFault(vcpu: vcpu.id)
        case let .internalError(suberror, data):
            if suberror == UInt32(KVM_INTERNAL_ERROR_EMULATION) {
                return completeFailedEmulation()
            }
            let words = data.map { "0x" + String($0, radix: 16) }.joined(separator: " ")
            return .vmmError("vCPU \(vcpu.id): KVM internal error, suberror \(suberror) [\(words)]")
        case let .systemEvent(type):
            switch Int32(type) {
            case KVM_SYSTEM_EVENT_SHUTDOWN: return .poweredOff
            case KVM_SYSTEM_EVENT_RESET: return .rebooted
            default: return .panicked
            }
        case .halt:
            stats.other += 1
            return nil
        case let .debug(exception, pc):
            stats.other += 1
            return .vmmError("vCPU \(vcpu.id): unexpected debug exit (exception \(exception) at 0x\(String(pc, radix: 16)))")
        case let .failEntry(reason):
            return .vmmError("vCPU \(vcpu.id): KVM failed to enter the guest (reason 0x\(String(reason, radix: 16)))")
        case let .unknown(reason):
            return .vmmError("vCPU \(vcpu.id): unhandled exit reason \(reason)")
        }
    }

    /// The guest pulsed reset. Was it an orderly reboot or a panic?
    ///
    /// Linux writes the BIOS warm-reset flag (0x1234 at physical 0x472) just
    /// before a keyboard-controller reset when the reboot mode is "warm", and
    /// 0 otherwise. Swiftlet boots Linux with `reboot=k,panic_warm`, so only
    /// the restart after a panic leaves 0x1234 there.
    func classifyReset() -> MachineExit {
        let flag = (try? context.memory.load(UInt16.self, at: ResetFlagWord.address)) ?? 0
        return flag == ResetFlagWord.warm ? .panicked : .rebooted
    }

    /// Answers the main thread's halt probe: is this vCPU halted with
    /// interrupts off (or never started), so that nothing can wake it but an NMI?
    func answerProbe() {
        let request = probeRequest.load(ordering: .acquiring)
        guard request != probeAnswered.load(ordering: .relaxed) else { return }
        var dead = false
        if let state = try? vcpu.getMPState() {
            if state == UInt32(KVM_MP_STATE_UNINITIALIZED) && vcpu.id != 0 {
                dead = true
            } else if state == UInt32(KVM_MP_STATE_HALTED), let regs = try? vcpu.getRegs() {
                dead = regs.rflags & (1 << 9) == 0
            }
        }
        probeDead.store(dead, ordering: .relaxed)
        probeAnswered.store(request, ordering: .releasing)
    }

    /// KVM stopped at an instruction its emulator failed on. Complete it if it
    /// is one Swiftlet knows (see `EmulationFixup`), else end the machine.
    func completeFailedEmulation() -> MachineExit? {
        guard let regs = try? vcpu.getRegs(), let sregs = try? vcpu.getSregs() else {
            return .vmmError("vCPU \(vcpu.id): emulation failure, and its registers are unreadable")
        }
        let mode = PageWalk.Mode(cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer)
        let linear = sregs.cs.base &+ regs.rip
        let bytes = PageWalk.fetch(linear, count: 15, mode: mode, memory: context.memory)
        guard context.emulationFixups, let fixup = EmulationFixup.decode(bytes) else {
            return .emulationFailure(vcpu: vcpu.id, rip: regs.rip, bytes: bytes)
        }
        do {
            try apply(fixup, regs: regs)
        } catch {
            return .vmmError("vCPU \(vcpu.id): completing \(fixup.instruction.rawValue): \(error)")
        }
        stats.emulationFixups[fixup.instruction, default: 0] += 1
        return nil
    }

    func apply(_ fixup: EmulationFixup, regs: kvm_regs) throws(KVMError) {
        var regs = regs
        switch fixup {
        case let .skip(_, length):
            regs.rip &+= UInt64(length)
            try vcpu.setRegs(regs)
        case let .breakpoint(length):
            // INT3 is a trap: the saved RIP points after it, which is what the
            // kernel's int3 handler expects (it subtracts one to find the site).
            regs.rip &+= UInt64(length)
            try vcpu.setRegs(regs)
            try inject(vector: 3)
        case let .fwait(length):
            let fpu = try vcpu.getFPU()
            if fpu.fsw & X87.fswErrorSummary != 0 && fpu.fcw & 0x3f & ~(fpu.fsw & 0x3f) != 0x3f {
                try inject(vector: 16) // #MF: a fault, RIP stays on FWAIT.
            } else {
                regs.rip &+= UInt64(length)
                try vcpu.setRegs(regs)
            }
        case let .fpu(instruction, length):
            var fpu = try vcpu.getFPU()
            switch instruction {
            case .fnclex: fpu.fsw &= ~X87.fswClearMask
            case .fninit:
                fpu.fcw = X87.fcwDefault
                fpu.fsw = 0
                fpu.ftwx = 0
                fpu.last_opcode = 0
                fpu.last_ip = 0
                fpu.last_dp = 0
            case .emms: fpu.ftwx = 0
            default: break
            }
            try vcpu.setFPU(fpu)
            regs.rip &+= UInt64(length)
            try vcpu.setRegs(regs)
        case let .alignmentCheck(set, length):
            if set { regs.rflags |= 1 << 18 } else { regs.rflags &= ~(1 << 18) }
            regs.rip &+= UInt64(length)
            try vcpu.setRegs(regs)
        case let .mxcsr(store, operand, length):
            let sregs = try vcpu.getSregs()
            let gprs = [regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
                        regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15]
            let linear = operand.linearAddress(registers: gprs, nextRIP: regs.rip &+ UInt64(length),
                                               fsBase: sregs.fs.base, gsBase: sregs.gs.base)
            let mode = PageWalk.Mode(cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer)
            // The 4 bytes may straddle a page: translate each one.
            let physical = (0..<4).compactMap { PageWalk.translate(linear &+ UInt64($0), mode: mode, memory: context.memory) }
            guard physical.count == 4 else { throw .system(SystemError("MXCSR operand 0x\(String(linear, radix: 16)) is not mapped", errno: EFAULT)) }
            // MXCSR is read from the XSAVE image: KVM_GET_FPU reports 0 for it on
            // nested PVM. Nor does KVM_SET_FPU/KVM_SET_XSAVE change the guest's
            // MXCSR there (measured), so a load is completed only when it
            // would leave MXCSR as it is: the kernel_fpu_begin() case, which
            // loads the default 0x1f80. Any other value stays fatal.
            let current = withUnsafeBytes(of: try vcpu.getXSAVE().region) { $0.load(fromByteOffset: 24, as: UInt32.self) }
            if store {
                for (k, p) in physical.enumerated() {
                    do { try context.memory.store(UInt8(truncatingIfNeeded: current >> (8 * UInt32(k))), at: p) } catch {
                        throw .system(SystemError("MXCSR store outside guest memory", errno: EFAULT))
                    }
                }
            } else {
                var value: UInt32 = 0
                for (k, p) in physical.enumerated() {
                    guard let b = try? context.memory.load(UInt8.self, at: p) else {
                        throw .system(SystemError("MXCSR load outside guest memory", errno: EFAULT))
                    }
                    value |= UInt32(b) << (8 * UInt32(k))
                }
                // Reserved MXCSR bits set: #GP(0), as the CPU would.
                if value & 0xffff_0000 != 0 {
                    try inject(vector: 13, errorCode: 0)
                    return
                }
                guard value == current else {
                    throw .system(SystemError("LDMXCSR of 0x\(String(value, radix: 16)) would change MXCSR (0x\(String(current, radix: 16))), which the VMM cannot do here", errno: ENOTSUP))
                }
            }
            regs.rip &+= UInt64(length)
            try vcpu.setRegs(regs)
        }
    }

    /// Queues exception `vector` for delivery on the next entry.
    func inject(vector: UInt8, errorCode: UInt32? = nil) throws(KVMError) {
        var events = try vcpu.getEvents()
        events.exception.injected = 1
        events.exception.nr = vector
        events.exception.has_error_code = errorCode == nil ? 0 : 1
        events.exception.error_code = errorCode ?? 0
        events.flags = 0
        try vcpu.setEvents(events)
    }
}

/// A vCPU must never spin: `KVM_RUN` returning at once, over and over,
/// without an exit, is a host-side failure (KVM could not start its per-VM
/// worker, say), never guest progress. A halted or waiting vCPU blocks inside
/// `KVM_RUN` and returns about once per kick (the 20 ms halt probe, a stop);
/// a spinning one returns thousands of times per kick.
struct SpinDetector {
    /// Returns in a row with no real exit before it may be a spin. A spinning
    /// `KVM_RUN` returns about 200,000 times a second here: well under 1 s.
    static let limit = 50_000
    /// More returns than this per kick are not the kicks' doing.
    static let returnsPerKick = 16
    private var idle = 0
    private var kicksAtStart: UInt64 = 0

    /// The machine's end when `exit` is one spin too many, else nil.
    mutating func check(_ exit: VcpuExit, kicks: UInt64, vcpu: Int) -> MachineExit? {
        guard case let .interrupted(err) = exit else {
            idle = 0
            return nil
        }
        if idle == 0 { kicksAtStart = kicks }
        idle += 1
        let kicked = Int(clamping: kicks &- kicksAtStart)
        guard idle >= Self.limit, idle > Self.returnsPerKick * (kicked + 1) else { return nil }
        let why = err == 0 ? "KVM_EXIT_INTR" : String(cString: strerror(err))
        return .vmmError("vCPU \(vcpu): KVM_RUN returned \(idle) times in a row without running the guest (\(why))")
    }
}
