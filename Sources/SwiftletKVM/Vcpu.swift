import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// Why `KVM_RUN` returned.
public enum VcpuExit {
    /// Port I/O. For `out`, `data` holds the bytes written; for `in`, fill `data`.
    case io(port: UInt16, isWrite: Bool, data: UnsafeMutableRawBufferPointer)
    /// MMIO. For writes, `data` holds the bytes; for reads, fill `data`.
    case mmio(address: UInt64, isWrite: Bool, data: UnsafeMutableRawBufferPointer)
    /// A triple fault or other shutdown of the vCPU.
    case shutdown
    /// A halt with a userspace irqchip (not used with the in-kernel LAPIC).
    case halt
    /// KVM could not handle something; `suberror` is `KVM_INTERNAL_ERROR_*`.
    case internalError(suberror: UInt32, data: [UInt64])
    /// A reset, shutdown or crash requested through a system event.
    case systemEvent(type: UInt32)
    /// `KVM_RUN` was interrupted (a kick). The caller checks its mailbox.
    case interrupted
    /// The guest hit a debug event (breakpoint or single step).
    case debug(exception: UInt32, pc: UInt64)
    /// KVM failed to enter the guest.
    case failEntry(reason: UInt64)
    /// Any other exit reason.
    case unknown(UInt32)
}

/// One virtual CPU: its descriptor and the shared `kvm_run` page.
///
/// Only its own thread calls `run()` and the register accessors. Other threads
/// may only `kick` it, which is why `immediate_exit` is written atomically.
public final class Vcpu: @unchecked Sendable {
    /// The vCPU index (also its APIC id).
    public let id: Int
    /// The vCPU descriptor.
    public let fd: Int32
    let runArea: UnsafeMutableRawPointer
    let runSize: Int
    /// The thread running this vCPU, once started.
    public let thread = Atomic<UInt>(0)

    init(id: Int, fd: Int32, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.fd = fd
        self.runArea = run
        self.runSize = runSize
    }

    deinit {
        munmap(runArea, runSize)
        close(fd)
    }

    private var run: UnsafeMutablePointer<kvm_run> { runArea.assumingMemoryBound(to: kvm_run.self) }

    /// Enters the guest until the next exit that userspace must handle.
    public func runOnce() throws(KVMError) -> VcpuExit {
        if ioctl(fd, SWL_KVM_RUN, 0) != 0 {
            let err = Glibc.errno
            if err == EINTR || err == EAGAIN {
                setImmediateExit(false)
                return .interrupted
            }
            throw .system(SystemError("ioctl(KVM_RUN)", errno: err))
        }
        let r = run
        switch Int32(r.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = r.pointee.io
            let count = Int(io.size) * Int(io.count)
            // SAFETY: data_offset is inside the kvm_run mapping; KVM bounds it to the page.
            let offset = Int(io.data_offset)
            guard offset >= 0, offset + count <= runSize else { return .unknown(UInt32(KVM_EXIT_IO)) }
            let data = UnsafeMutableRawBufferPointer(start: runArea + offset, count: count)
            return .io(port: io.port, isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT), data: data)
        case KVM_EXIT_MMIO:
            let len = Int(min(r.pointee.mmio.len, 8))
            // SAFETY: mmio.data is an 8-byte array inside kvm_run.
            let base = withUnsafeMutablePointer(to: &r.pointee.mmio.data) { UnsafeMutableRawPointer($0) }
            return .mmio(address: r.pointee.mmio.phys_addr, isWrite: r.pointee.mmio.is_write != 0,
                         data: UnsafeMutableRawBufferPointer(start: base, count: len))
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = r.pointee.internal
            let n = Int(min(ie.ndata, 16))
            let data = withUnsafeBytes(of: ie.data) { Array($0.bindMemory(to: UInt64.self).prefix(n)) }
            return .internalError(suberror: ie.suberror, data: data)
        case KVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: r.pointee.system_event.type)
        case KVM_EXIT_DEBUG:
            return .debug(exception: r.pointee.debug.arch.exception, pc: r.pointee.debug.arch.pc)
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: r.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTR:
            return .interrupted
        default:
            return .unknown(r.pointee.exit_reason)
        }
    }

    /// Sets or clears `immediate_exit`, so the next (or current) `KVM_RUN` returns EINTR.
    public func setImmediateExit(_ on: Bool) {
        // SAFETY: immediate_exit is a byte in the shared kvm_run page; an atomic
        // byte store keeps the kicker's write visible to the vCPU thread.
        let p = UnsafeMutableRawPointer(mutating: withUnsafePointer(to: &run.pointee.immediate_exit) { $0 })
        let atomicPtr = p.assumingMemoryBound(to: UInt8.self)
        swl_atomic_store_u8(atomicPtr, on ? 1 : 0)
    }

    /// Forces the vCPU out of `KVM_RUN`: sets `immediate_exit`, then signals its thread.
    public func kick(signal: Int32) {
        setImmediateExit(true)
        let t = thread.load(ordering: .acquiring)
        if t != 0 { pthread_kill(pthread_t(t), signal) }
    }

    // MARK: - State

    public func getRegs() throws(KVMError) -> kvm_regs {
        var r = kvm_regs()
        _ = try kvmIoctl(fd, SWL_KVM_GET_REGS, &r, "KVM_GET_REGS")
        return r
    }
    public func setRegs(_ regs: kvm_regs) throws(KVMError) {
        var r = regs
        _ = try kvmIoctl(fd, SWL_KVM_SET_REGS, &r, "KVM_SET_REGS")
    }
    public func getSregs() throws(KVMError) -> kvm_sregs {
        var s = kvm_sregs()
        _ = try kvmIoctl(fd, SWL_KVM_GET_SREGS, &s, "KVM_GET_SREGS")
        return s
    }
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) {
        var s = sregs
        _ = try kvmIoctl(fd, SWL_KVM_SET_SREGS, &s, "KVM_SET_SREGS")
    }
    public func getFPU() throws(KVMError) -> kvm_fpu {
        var f = kvm_fpu()
        _ = try kvmIoctl(fd, SWL_KVM_GET_FPU, &f, "KVM_GET_FPU")
        return f
    }
    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) {
        var f = fpu
        _ = try kvmIoctl(fd, SWL_KVM_SET_FPU, &f, "KVM_SET_FPU")
    }
    public func getLAPIC() throws(KVMError) -> kvm_lapic_state {
        var l = kvm_lapic_state()
        _ = try kvmIoctl(fd, SWL_KVM_GET_LAPIC, &l, "KVM_GET_LAPIC")
        return l
    }
    public func setLAPIC(_ lapic: kvm_lapic_state) throws(KVMError) {
        var l = lapic
        _ = try kvmIoctl(fd, SWL_KVM_SET_LAPIC, &l, "KVM_SET_LAPIC")
    }
    public func getEvents() throws(KVMError) -> kvm_vcpu_events {
        var e = kvm_vcpu_events()
        _ = try kvmIoctl(fd, SWL_KVM_GET_VCPU_EVENTS, &e, "KVM_GET_VCPU_EVENTS")
        return e
    }
    public func setEvents(_ events: kvm_vcpu_events) throws(KVMError) {
        var e = events
        _ = try kvmIoctl(fd, SWL_KVM_SET_VCPU_EVENTS, &e, "KVM_SET_VCPU_EVENTS")
    }
    public func getMPState() throws(KVMError) -> UInt32 {
        var s = kvm_mp_state()
        _ = try kvmIoctl(fd, SWL_KVM_GET_MP_STATE, &s, "KVM_GET_MP_STATE")
        return s.mp_state
    }

    /// Installs the CPUID table the guest sees.
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        guard entries.count <= Int(SWL_MAX_CPUID_ENTRIES) else { throw .tooMany("CPUID entries") }
        var buf = swl_cpuid()
        buf.nent = UInt32(entries.count)
        withUnsafeMutableBytes(of: &buf.entries) { raw in
            let dst = raw.bindMemory(to: kvm_cpuid_entry2.self)
            for (i, e) in entries.enumerated() { dst[i] = e }
        }
        _ = try kvmIoctl(fd, SWL_KVM_SET_CPUID2, &buf, "KVM_SET_CPUID2")
    }

    /// Writes MSRs. Fails if KVM accepts fewer than all of them.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        guard msrs.count <= Int(SWL_MAX_MSR_ENTRIES) else { throw .tooMany("MSRs") }
        var buf = swl_msrs()
        buf.nmsrs = UInt32(msrs.count)
        withUnsafeMutableBytes(of: &buf.entries) { raw in
            let dst = raw.bindMemory(to: kvm_msr_entry.self)
            for (i, m) in msrs.enumerated() {
                dst[i] = kvm_msr_entry()
                dst[i].index = m.index
                dst[i].data = m.value
            }
        }
        let n = try kvmIoctl(fd, SWL_KVM_SET_MSRS, &buf, "KVM_SET_MSRS")
        if Int(n) != msrs.count {
            let bad = msrs[Int(n)].index
            throw .system(SystemError("KVM_SET_MSRS (MSR 0x\(String(bad, radix: 16)) refused)", errno: EINVAL))
        }
    }

    /// Enables guest debugging (single step, hardware breakpoints).
    public func setGuestDebug(_ debug: kvm_guest_debug) throws(KVMError) {
        var d = debug
        _ = try kvmIoctl(fd, SWL_KVM_SET_GUEST_DEBUG, &d, "KVM_SET_GUEST_DEBUG")
    }
}
