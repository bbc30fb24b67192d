/// The vCPU register values for the 64-bit boot protocol entry, as plain
/// numbers (the VMM puts them into kvm_regs / kvm_sregs / kvm_fpu).
///
/// At entry: long mode with paging on the boot page tables, flat segments
/// from the boot GDT, interrupts off, RSI = the zero page, RIP = the kernel entry.
public enum BootRegisters {
    /// RFLAGS: only the always-one bit 1 (interrupts disabled).
    public static let rflags: UInt64 = 0x2
    /// RSP and RBP.
    public static let stackPointer: UInt64 = Layout.bootStack
    /// RSI: the zero page, as the 64-bit boot protocol requires.
    public static let bootParams: UInt64 = Layout.zeroPage

    /// CR0: protection enable (PE, bit 0) and paging (PG, bit 31).
    public static let cr0: UInt64 = (1 << 0) | (1 << 31)
    /// CR4: physical address extension (PAE, bit 5), required for long mode.
    public static let cr4: UInt64 = 1 << 5
    /// EFER: long mode enable (LME, bit 8) and long mode active (LMA, bit 10).
    public static let efer: UInt64 = (1 << 8) | (1 << 10)

    /// FPU control word at reset: all exceptions masked, extended precision.
    public static let fpuControlWord: UInt16 = 0x37f
    /// MXCSR at reset: all SIMD exceptions masked.
    public static let mxcsr: UInt32 = 0x1f80
}
