import CSwiftlet
import SwiftletKVM
import SwiftletX86

/// Puts vCPUs in the state the Linux 64-bit boot protocol expects.
enum VcpuSetup {
    /// For every vCPU: CPUID, boot MSRs, and the LAPIC's LINT0/LINT1 wiring.
    static func configure(_ vcpu: Vcpu, cpuid: [kvm_cpuid_entry2]) throws(KVMError) {
        try vcpu.setCPUID(cpuid)
        try vcpu.setMSRs(MSR.bootEntries.map { (index: $0.index, value: $0.value) })
        try configureLAPIC(vcpu)
    }

    /// The CPUID table vCPU `index` of `cpuCount` sees under `template`.
    static func cpuidTable(index: Int, cpuCount: Int, supportedCPUID: [kvm_cpuid_entry2], template: CPUTemplate) -> [kvm_cpuid_entry2] {
        let entries = supportedCPUID.map(CPUIDEntry.init(kvm:))
        return CPUID.normalize(entries, cpuIndex: index, cpuCount: cpuCount, template: template).map(\.kvm)
    }

    /// LINT0 takes the PIC's interrupts (ExtINT) and LINT1 takes NMIs, as on a PC.
    static func configureLAPIC(_ vcpu: Vcpu) throws(KVMError) {
        var lapic = try vcpu.getLAPIC()
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            func setDeliveryMode(_ offset: Int, _ mode: UInt32) {
                let v = regs.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                regs.storeBytes(of: (v & ~0x700) | (mode << 8), toByteOffset: offset, as: UInt32.self)
            }
            setDeliveryMode(LAPICRegister.lvtLINT0, LAPICRegister.deliveryExtINT)
            setDeliveryMode(LAPICRegister.lvtLINT1, LAPICRegister.deliveryNMI)
        }
        try vcpu.setLAPIC(lapic)
    }

    /// The boot processor: long mode, identity paging, RIP at the kernel entry,
    /// RSI at the zero page; a clean FPU.
    static func configureBootProcessor(_ vcpu: Vcpu, entry: UInt64) throws(KVMError) {
        var sregs = try vcpu.getSregs()
        let code = kvmSegment(GDT.bootCodeSegment)
        let data = kvmSegment(GDT.bootDataSegment)
        sregs.cs = code
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        sregs.tr = kvmSegment(GDT.bootTSSSegment)
        sregs.gdt.base = Layout.gdtAddress
        sregs.gdt.limit = GDT.limit
        sregs.idt.base = Layout.idtAddress
        sregs.idt.limit = GDT.idtLimit
        sregs.cr3 = Layout.pml4
        sregs.cr4 |= BootRegisters.cr4
        sregs.cr0 |= BootRegisters.cr0
        sregs.efer |= BootRegisters.efer
        try vcpu.setSregs(sregs)

        var regs = kvm_regs()
        regs.rflags = BootRegisters.rflags
        regs.rip = entry
        regs.rsp = BootRegisters.stackPointer
        regs.rbp = BootRegisters.stackPointer
        regs.rsi = BootRegisters.bootParams
        try vcpu.setRegs(regs)

        var fpu = kvm_fpu()
        fpu.fcw = BootRegisters.fpuControlWord
        fpu.mxcsr = BootRegisters.mxcsr
        try vcpu.setFPU(fpu)
    }

    /// Real mode at `entry` (below 64 KiB), for tiny test guests.
    static func configureRealMode(_ vcpu: Vcpu, entry: UInt64) throws(KVMError) {
        var sregs = try vcpu.getSregs()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        try vcpu.setSregs(sregs)
        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = entry
        regs.rsp = 0x7000
        try vcpu.setRegs(regs)
    }

    static func kvmSegment(_ s: Segment) -> kvm_segment {
        var k = kvm_segment()
        k.base = s.base
        k.limit = s.limit
        k.selector = s.selector
        k.type = s.type
        k.present = s.present
        k.dpl = s.dpl
        k.db = s.db
        k.s = s.s
        k.l = s.l
        k.g = s.g
        k.avl = s.avl
        k.unusable = s.present == 0 ? 1 : 0
        return k
    }
}

enum LAPICRegister {
    static let lvtLINT0 = 0x350
    static let lvtLINT1 = 0x360
    static let deliveryExtINT: UInt32 = 0x7
    static let deliveryNMI: UInt32 = 0x4
}

extension CPUIDEntry {
    init(kvm e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var kvm: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function
        e.index = index
        e.flags = flags
        e.eax = eax
        e.ebx = ebx
        e.ecx = ecx
        e.edx = edx
        return e
    }
}
