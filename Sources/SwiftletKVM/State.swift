import CSwiftlet
import Glibc
import SwiftletSys

/// Everything KVM holds for one vCPU, as the `KVM_GET_*` ioctls return it:
/// what a snapshot must carry to resume the vCPU elsewhere.
public struct VcpuState: Sendable {
    public var regs = kvm_regs()
    public var sregs = kvm_sregs()
    /// The XSAVE image (x87, SSE, AVX ...).
    public var xsave = kvm_xsave()
    public var xcrs = kvm_xcrs()
    public var debugRegs = kvm_debugregs()
    public var lapic = kvm_lapic_state()
    /// Every MSR KVM lists (`KVM_GET_MSR_INDEX_LIST`) that it let us read.
    public var msrs: [(index: UInt32, value: UInt64)] = []
    /// Pending exceptions, interrupts and NMIs, and the interrupt shadow.
    public var events = kvm_vcpu_events()
    public var mpState = kvm_mp_state()
    /// The guest's TSC frequency, 0 when KVM could not tell.
    public var tscKHz: UInt32 = 0

    public init() {}
}

/// The in-kernel devices' state: both PICs, the IOAPIC, the PIT and the kvmclock base.
public struct VMState: Sendable {
    public var picMaster = kvm_irqchip()
    public var picSlave = kvm_irqchip()
    public var ioapic = kvm_irqchip()
    public var pit = kvm_pit_state2()
    public var clock = kvm_clock_data()

    public init() {}
}

extension Vcpu {
    /// Reads the vCPU's whole state. Call it on the vCPU's own thread, after a
    /// `KVM_RUN` that completed any pending port or MMIO access (see
    /// `completePendingIO`), so no instruction is left half done.
    public func saveState(msrIndices: [UInt32]) throws(KVMError) -> VcpuState {
        var s = VcpuState()
        s.regs = try getRegs()
        s.sregs = try getSregs()
        s.xsave = try getXSAVE()
        s.xcrs = try get(SWL_KVM_GET_XCRS, "KVM_GET_XCRS", kvm_xcrs())
        s.debugRegs = try get(SWL_KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", kvm_debugregs())
        s.lapic = try getLAPIC()
        s.msrs = try readableMSRs(msrIndices)
        s.events = try getEvents()
        s.mpState = try get(SWL_KVM_GET_MP_STATE, "KVM_GET_MP_STATE", kvm_mp_state())
        let khz = ioctl(fd, SWL_KVM_GET_TSC_KHZ)
        s.tscKHz = khz > 0 ? UInt32(khz) : 0
        return s
    }

    /// Writes a saved state into a fresh vCPU whose CPUID is already set. The
    /// order matters: the LAPIC before the MSRs (the TSC deadline is only
    /// accepted in TSC-deadline mode), the events last.
    public func restoreState(_ s: VcpuState) throws(KVMError) {
        if s.tscKHz != 0 {
            let current = ioctl(fd, SWL_KVM_GET_TSC_KHZ)
            if current != Int32(bitPattern: s.tscKHz) {
                _ = try kvmIoctl(fd, SWL_KVM_SET_TSC_KHZ, value: Int32(bitPattern: s.tscKHz), "KVM_SET_TSC_KHZ")
            }
        }
        try set(SWL_KVM_SET_MP_STATE, "KVM_SET_MP_STATE", s.mpState)
        try setRegs(s.regs)
        try setSregs(s.sregs)
        try setXSAVE(s.xsave)
        try set(SWL_KVM_SET_XCRS, "KVM_SET_XCRS", s.xcrs)
        try set(SWL_KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", s.debugRegs)
        try setLAPIC(s.lapic)
        try setMSRs(s.msrs)
        try setEvents(s.events)
    }

    /// Completes a port or MMIO read the last exit left pending: KVM finishes
    /// it on the next `KVM_RUN`, which `immediate_exit` then ends at once.
    public func completePendingIO() throws(KVMError) {
        setImmediateExit(true)
        defer { setImmediateExit(false) }
        _ = try runOnce()
    }

    /// Reads `indices` in batches, skipping the ones KVM refuses (an MSR it
    /// lists but this CPU lacks): `KVM_GET_MSRS` stops at the first of those.
    func readableMSRs(_ indices: [UInt32]) throws(KVMError) -> [(index: UInt32, value: UInt64)] {
        var out: [(index: UInt32, value: UInt64)] = []
        var pending = indices[...]
        while !pending.isEmpty {
            let batch = Array(pending.prefix(Int(SWL_MAX_MSR_ENTRIES)))
            var buf = try Vcpu.msrBuffer(batch.map { (index: $0, value: 0) })
            let n = Int(try kvmIoctl(fd, SWL_KVM_GET_MSRS, &buf, "KVM_GET_MSRS"))
            // SAFETY: `n` is at most the entries KVM filled (KVM_GET_MSRS's return), within the buffer.
            unsafe withUnsafeBytes(of: &buf.entries) { raw in
                for unsafe e in unsafe raw.bindMemory(to: kvm_msr_entry.self).prefix(n) { out.append((index: e.index, value: e.data)) }
            }
            // Entry n (if any) was refused: skip it and go on after it.
            pending = pending.dropFirst(min(n + 1, batch.count))
        }
        return out
    }
}

extension VirtualMachine {
    /// Reads the in-kernel irqchip, PIT and clock. The vCPUs must be stopped.
    public func saveState() throws(KVMError) -> VMState {
        var s = VMState()
        s.picMaster = try irqchip(KVM_IRQCHIP_PIC_MASTER)
        s.picSlave = try irqchip(KVM_IRQCHIP_PIC_SLAVE)
        s.ioapic = try irqchip(KVM_IRQCHIP_IOAPIC)
        _ = try kvmIoctl(fd, SWL_KVM_GET_PIT2, &s.pit, "KVM_GET_PIT2")
        _ = try kvmIoctl(fd, SWL_KVM_GET_CLOCK, &s.clock, "KVM_GET_CLOCK")
        return s
    }

    /// Writes a saved irqchip, PIT and clock into a fresh VM (after
    /// `createIRQChip` and `createPIT`). The kvmclock resumes where it was
    /// saved: the time the snapshot spent on disk never passes for the guest.
    public func restoreState(_ s: VMState) throws(KVMError) {
        for var chip in [s.picMaster, s.picSlave, s.ioapic] {
            _ = try kvmIoctl(fd, SWL_KVM_SET_IRQCHIP, &chip, "KVM_SET_IRQCHIP")
        }
        var pit = s.pit
        _ = try kvmIoctl(fd, SWL_KVM_SET_PIT2, &pit, "KVM_SET_PIT2")
        try setClock(s.clock.clock)
    }

    /// KVM_SET_CLOCK: the guest's kvmclock reads `nanos` from now on.
    public func setClock(_ nanos: UInt64) throws(KVMError) {
        var clock = kvm_clock_data()
        clock.clock = nanos
        _ = try kvmIoctl(fd, SWL_KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK")
    }

    private func irqchip(_ id: Int32) throws(KVMError) -> kvm_irqchip {
        var chip = kvm_irqchip()
        chip.chip_id = UInt32(id)
        _ = try kvmIoctl(fd, SWL_KVM_GET_IRQCHIP, &chip, "KVM_GET_IRQCHIP")
        return chip
    }
}
