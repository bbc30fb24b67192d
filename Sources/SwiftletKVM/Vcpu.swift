import CSwiftlet
import Glibc
import Synchronization
import SwiftletSys

/// Why `KVM_RUN` returned.
///
/// `@safe`: only the I/O and MMIO cases carry a pointer (`data`, into the
/// vCPU's `kvm_run` page, valid until its next `KVM_RUN`), and its type makes
/// every use of it an `unsafe` one.
@safe public enum VcpuExit {
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
    /// `KVM_RUN` returned without running the guest to an exit: a kick
    /// (`EINTR`, or `KVM_EXIT_INTR` with `errno` 0), or `EAGAIN` (an AP
    /// woken while it waits for INIT/SIPI). The caller checks its mailbox.
    case interrupted(errno: Int32)
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
///
/// `@unchecked Sendable`: `runArea` is a raw pointer to the shared page, which
/// only the vCPU's own thread touches (but `immediate_exit`, written atomically).
///
/// `@safe`: the `kvm_run` mapping is private, and every use of it below
/// stays inside `runSize` or KVM's own layout of the page.
@safe public final class Vcpu: @unchecked Sendable {
    /// The vCPU index (also its APIC id).
    public let id: Int
    private let handle: OwnedFD
    /// The vCPU descriptor, valid while `self` lives.
    public var fd: Int32 { handle.raw }
    let runArea: UnsafeMutableRawPointer
    let runSize: Int
    /// The thread running this vCPU, once started.
    public let thread = Atomic<UInt>(0)
    /// How many times another thread kicked this vCPU: the run loop tells a
    /// kick from a `KVM_RUN` that returns on its own, again and again.
    public let kicks = Atomic<UInt64>(0)

    init(id: Int, handle: consuming OwnedFD, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.handle = handle
        // SAFETY: the caller mapped `runSize` bytes of this vCPU's kvm_run area at `run`; the vCPU owns it now.
        unsafe self.runArea = run
        self.runSize = runSize
    }

    // SAFETY: the kvm_run mapping, unmapped once when the vCPU goes.
    deinit { unsafe munmap(runArea, runSize) }

    /// Where the exit union starts in kvm_run (after apic_base), and the
    /// data bytes of its `mmio` member (after the 8-byte phys_addr).
    static let exitUnionOffset = MemoryLayout<kvm_run>.offset(of: \.apic_base)! + 8
    static let mmioDataOffset = exitUnionOffset + 8

    // SAFETY: KVM lays out a kvm_run at the start of the mapping.
    private var run: UnsafeMutablePointer<kvm_run> { unsafe runArea.assumingMemoryBound(to: kvm_run.self) }

    /// Enters the guest until the next exit that userspace must handle.
    public func runOnce() throws(KVMError) -> VcpuExit {
        if ioctl(fd, SWL_KVM_RUN, 0) != 0 {
            let err = Glibc.errno
            if err == EINTR || err == EAGAIN {
                setImmediateExit(false)
                return .interrupted(errno: err)
            }
            throw .system(SystemError("ioctl(KVM_RUN)", errno: err))
        }
        // SAFETY: reads of the kvm_run page that KVM_RUN just filled, on the vCPU's own thread.
        let r = unsafe run
        switch unsafe Int32(r.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = unsafe r.pointee.io
            let count = Int(io.size) * Int(io.count)
            let offset = Int(io.data_offset)
            guard offset >= 0, offset + count <= runSize else { return .unknown(UInt32(KVM_EXIT_IO)) }
            // SAFETY: `offset + count <= runSize`, checked just above: the bytes lie inside the page.
            let data = unsafe UnsafeMutableRawBufferPointer(start: runArea + offset, count: count)
            return unsafe .io(port: io.port, isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT), data: data)
        case KVM_EXIT_MMIO:
            let len = unsafe Int(min(r.pointee.mmio.len, 8))
            // The exit union is imported as computed properties, so `&mmio.data`
            // would point at a copy: address the data bytes inside kvm_run.
            // SAFETY: the 8-byte `mmio.data` field lies inside the kvm_run page, and `len` is capped at 8.
            let data = unsafe UnsafeMutableRawBufferPointer(start: runArea + Vcpu.mmioDataOffset, count: len)
            return unsafe .mmio(address: r.pointee.mmio.phys_addr, isWrite: r.pointee.mmio.is_write != 0, data: data)
        case KVM_EXIT_SHUTDOWN:
            return .shutdown
        case KVM_EXIT_HLT:
            return .halt
        case KVM_EXIT_INTERNAL_ERROR:
            let ie = unsafe r.pointee.internal
            let n = Int(min(ie.ndata, 16))
            // SAFETY: `n` is capped at the fixed `data` array's length.
            let data = unsafe withUnsafeBytes(of: ie.data) { unsafe Array($0.bindMemory(to: UInt64.self).prefix(n)) }
            return .internalError(suberror: ie.suberror, data: data)
        case KVM_EXIT_SYSTEM_EVENT:
            return unsafe .systemEvent(type: r.pointee.system_event.type)
        case KVM_EXIT_DEBUG:
            return unsafe .debug(exception: r.pointee.debug.arch.exception, pc: r.pointee.debug.arch.pc)
        case KVM_EXIT_FAIL_ENTRY:
            return unsafe .failEntry(reason: r.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTR:
            return .interrupted(errno: 0)
        default:
            return unsafe .unknown(r.pointee.exit_reason)
        }
    }

    /// Sets or clears `immediate_exit`, so the next (or current) `KVM_RUN` returns EINTR.
    public func setImmediateExit(_ on: Bool) {
        // SAFETY: immediate_exit is a byte in the shared kvm_run page; an atomic
        // byte store keeps the kicker's write visible to the vCPU thread.
        let p = unsafe runArea + MemoryLayout<kvm_run>.offset(of: \.immediate_exit)!
        unsafe swl_atomic_store_u8(p.assumingMemoryBound(to: UInt8.self), on ? 1 : 0)
    }

    /// Forces the vCPU out of `KVM_RUN`: sets `immediate_exit`, then signals its thread.
    public func kick(signal: Int32) {
        kicks.add(1, ordering: .releasing)
        setImmediateExit(true)
        let t = thread.load(ordering: .acquiring)
        if t != 0 { pthread_kill(pthread_t(t), signal) }
    }

    // MARK: - State

    /// Reads one state structure with a `KVM_GET_*` ioctl.
    func get<T>(_ request: UInt, _ name: String, _ empty: T) throws(KVMError) -> T {
        var value = empty
        _ = try kvmIoctl(fd, request, &value, name)
        return value
    }

    /// Writes one state structure with a `KVM_SET_*` ioctl.
    func set<T>(_ request: UInt, _ name: String, _ value: T) throws(KVMError) {
        var copy = value
        _ = try kvmIoctl(fd, request, &copy, name)
    }

    public func getRegs() throws(KVMError) -> kvm_regs { try get(SWL_KVM_GET_REGS, "KVM_GET_REGS", kvm_regs()) }
    public func setRegs(_ regs: kvm_regs) throws(KVMError) { try set(SWL_KVM_SET_REGS, "KVM_SET_REGS", regs) }
    public func getSregs() throws(KVMError) -> kvm_sregs { try get(SWL_KVM_GET_SREGS, "KVM_GET_SREGS", kvm_sregs()) }
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) { try set(SWL_KVM_SET_SREGS, "KVM_SET_SREGS", sregs) }
    public func getFPU() throws(KVMError) -> kvm_fpu { try get(SWL_KVM_GET_FPU, "KVM_GET_FPU", kvm_fpu()) }
    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) { try set(SWL_KVM_SET_FPU, "KVM_SET_FPU", fpu) }
    public func getLAPIC() throws(KVMError) -> kvm_lapic_state { try get(SWL_KVM_GET_LAPIC, "KVM_GET_LAPIC", kvm_lapic_state()) }
    public func setLAPIC(_ lapic: kvm_lapic_state) throws(KVMError) { try set(SWL_KVM_SET_LAPIC, "KVM_SET_LAPIC", lapic) }
    public func getEvents() throws(KVMError) -> kvm_vcpu_events { try get(SWL_KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", kvm_vcpu_events()) }
    public func setEvents(_ events: kvm_vcpu_events) throws(KVMError) { try set(SWL_KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", events) }
    /// The XSAVE image; its first 512 bytes are the FXSAVE layout (MXCSR at 24).
    public func getXSAVE() throws(KVMError) -> kvm_xsave { try get(SWL_KVM_GET_XSAVE, "KVM_GET_XSAVE", kvm_xsave()) }
    public func setXSAVE(_ xsave: kvm_xsave) throws(KVMError) { try set(SWL_KVM_SET_XSAVE, "KVM_SET_XSAVE", xsave) }

    public func getMPState() throws(KVMError) -> UInt32 {
        try get(SWL_KVM_GET_MP_STATE, "KVM_GET_MP_STATE", kvm_mp_state()).mp_state
    }

    /// Installs the CPUID table the guest sees.
    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws(KVMError) {
        guard entries.count <= Int(SWL_MAX_CPUID_ENTRIES) else { throw .tooMany("CPUID entries") }
        var buf = swl_cpuid()
        buf.nent = UInt32(entries.count)
        // SAFETY: `entries.count` was checked against the buffer's capacity above.
        unsafe withUnsafeMutableBytes(of: &buf.entries) { raw in
            let dst = unsafe raw.bindMemory(to: kvm_cpuid_entry2.self)
            for (i, e) in entries.enumerated() { unsafe dst[i] = e }
        }
        _ = try kvmIoctl(fd, SWL_KVM_SET_CPUID2, &buf, "KVM_SET_CPUID2")
    }

    /// Writes MSRs. Fails if KVM accepts fewer than all of them.
    /// Any number of them: they go in batches of `SWL_MAX_MSR_ENTRIES`.
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        var start = 0
        while start < msrs.count {
            let batch = Array(msrs[start..<min(start + Int(SWL_MAX_MSR_ENTRIES), msrs.count)])
            var buf = try Vcpu.msrBuffer(batch)
            let n = try kvmIoctl(fd, SWL_KVM_SET_MSRS, &buf, "KVM_SET_MSRS")
            if Int(n) != batch.count {
                let bad = batch[Int(n)].index
                throw .system(SystemError("KVM_SET_MSRS (MSR 0x\(String(bad, radix: 16)) refused)", errno: EINVAL))
            }
            start += batch.count
        }
    }

    /// Reads MSRs; returns the values in the order asked.
    public func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [UInt64] {
        var buf = try Vcpu.msrBuffer(indices.map { (index: $0, value: 0) })
        let n = try kvmIoctl(fd, SWL_KVM_GET_MSRS, &buf, "KVM_GET_MSRS")
        guard Int(n) == indices.count else {
            throw .system(SystemError("KVM_GET_MSRS (MSR 0x\(String(indices[Int(n)], radix: 16)) refused)", errno: EINVAL))
        }
        // SAFETY: KVM_GET_MSRS filled `indices.count` entries, checked against the buffer above.
        return unsafe withUnsafeBytes(of: &buf.entries) { raw in
            unsafe raw.bindMemory(to: kvm_msr_entry.self).prefix(indices.count).map(\.data)
        }
    }

    /// A `kvm_msrs` buffer holding `msrs`.
    static func msrBuffer(_ msrs: [(index: UInt32, value: UInt64)]) throws(KVMError) -> swl_msrs {
        guard msrs.count <= Int(SWL_MAX_MSR_ENTRIES) else { throw .tooMany("MSRs") }
        var buf = swl_msrs()
        buf.nmsrs = UInt32(msrs.count)
        // SAFETY: `msrs.count` was checked against the buffer's capacity above.
        unsafe withUnsafeMutableBytes(of: &buf.entries) { raw in
            let dst = unsafe raw.bindMemory(to: kvm_msr_entry.self)
            for (i, m) in msrs.enumerated() {
                unsafe dst[i] = kvm_msr_entry()
                unsafe dst[i].index = m.index
                unsafe dst[i].data = m.value
            }
        }
        return buf
    }

    /// Enables guest debugging (single step, hardware breakpoints).
    public func setGuestDebug(_ debug: kvm_guest_debug) throws(KVMError) {
        var d = debug
        _ = try kvmIoctl(fd, SWL_KVM_SET_GUEST_DEBUG, &d, "KVM_SET_GUEST_DEBUG")
    }
}
