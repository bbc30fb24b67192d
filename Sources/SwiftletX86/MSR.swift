/// One model-specific register and the value to load (`kvm_msr_entry`).
public struct MSREntry: Sendable, Equatable {
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// The MSRs a vCPU starts with.
public enum MSR {
    public static let ia32SysenterCS: UInt32 = 0x174
    public static let ia32SysenterESP: UInt32 = 0x175
    public static let ia32SysenterEIP: UInt32 = 0x176
    public static let star: UInt32 = 0xc000_0081
    public static let lstar: UInt32 = 0xc000_0082
    public static let cstar: UInt32 = 0xc000_0083
    public static let syscallMask: UInt32 = 0xc000_0084
    public static let kernelGSBase: UInt32 = 0xc000_0102
    public static let ia32TSC: UInt32 = 0x10
    public static let ia32MiscEnable: UInt32 = 0x1a0
    public static let mtrrDefType: UInt32 = 0x2ff

    /// IA32_MISC_ENABLE bit 0: fast string operations enabled, as firmware leaves it.
    public static let miscEnableFastString: UInt64 = 1 << 0
    /// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
    /// Without it the guest would see all memory as uncacheable.
    public static let mtrrDefTypeEnabledWB: UInt64 = (1 << 11) | 6

    /// The boot list: the syscall/sysenter MSRs cleared (the kernel sets them
    /// up itself; clearing them resets state from a previous boot), the TSC
    /// at 0, fast strings on, and write-back MTRR default.
    public static let bootEntries: [MSREntry] = [
        MSREntry(index: ia32SysenterCS, value: 0),
        MSREntry(index: ia32SysenterESP, value: 0),
        MSREntry(index: ia32SysenterEIP, value: 0),
        MSREntry(index: star, value: 0),
        MSREntry(index: cstar, value: 0),
        MSREntry(index: kernelGSBase, value: 0),
        MSREntry(index: syscallMask, value: 0),
        MSREntry(index: lstar, value: 0),
        MSREntry(index: ia32TSC, value: 0),
        MSREntry(index: ia32MiscEnable, value: miscEnableFastString),
        MSREntry(index: mtrrDefType, value: mtrrDefTypeEnabledWB),
    ]
}
