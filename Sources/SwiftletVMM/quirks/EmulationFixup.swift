/// What Swiftlet does for an instruction that KVM's emulator failed on.
///
/// On nested "PVM" KVM, guest ring-0 code runs through KVM's instruction
/// emulator, which does not know every instruction a Linux kernel uses. Each
/// failure reaches userspace as `KVM_INTERNAL_ERROR_EMULATION` with the vCPU
/// stopped before the instruction. For the instructions below, Swiftlet
/// carries out the architectural effect itself and resumes the guest.
/// Everything else stays a fatal error: guessing would corrupt the guest.
///
/// | instruction | bytes | why it is safe to complete in userspace |
/// |---|---|---|
/// | INT3 | `CC` | a trap: advance RIP, inject #BP; the kernel's INT3 self-test and text_poke_bp rely on it |
/// | FWAIT | `9B` | waits for pending x87 exceptions: a no-op unless FSW.ES is set, then #MF |
/// | FNCLEX | `DB E2` | clears the x87 exception flags in FSW |
/// | FNINIT | `DB E3` | resets the x87 control, status and tag words |
/// | EMMS | `0F 77` | marks all x87 registers empty |
/// | CLAC / STAC | `0F 01 CA` / `0F 01 CB` | clear / set RFLAGS.AC |
/// | LFENCE / MFENCE / SFENCE | `0F AE E8-FF` | ordering only: the vCPU is stopped, so already ordered |
/// | WBINVD / INVD | `0F 09` / `0F 08` | guest memory is coherent host memory: nothing to write back |
public enum EmulationFixup: Equatable, Sendable {
    /// The instruction's effect is nothing at all here: skip it.
    case skip(Instruction, length: Int)
    /// Advance past INT3 and inject #BP (vector 3).
    case breakpoint(length: Int)
    /// FWAIT: skip, or inject #MF if an unmasked x87 exception is pending.
    case fwait(length: Int)
    /// Complete an x87/MMX state change through `KVM_SET_FPU`.
    case fpu(Instruction, length: Int)
    /// Clear (CLAC) or set (STAC) RFLAGS.AC.
    case alignmentCheck(set: Bool, length: Int)

    /// The instructions Swiftlet completes, for statistics and messages.
    public enum Instruction: String, Sendable, CaseIterable {
        case int3, fwait, fnclex, fninit, emms, clac, stac, fence, wbinvd
    }

    /// Which instruction this fixup completes.
    public var instruction: Instruction {
        switch self {
        case let .skip(i, _), let .fpu(i, _): return i
        case .breakpoint: return .int3
        case .fwait: return .fwait
        case let .alignmentCheck(set, _): return set ? .stac : .clac
        }
    }

    /// Decodes the instruction at the start of `bytes`, or nil if Swiftlet
    /// does not handle it. Only prefixes that cannot change these
    /// instructions' meaning (operand size, REX) are skipped.
    public static func decode(_ bytes: [UInt8]) -> EmulationFixup? {
        var i = 0
        while i < bytes.count && i < 4 && (bytes[i] == 0x66 || (bytes[i] & 0xf0) == 0x40) { i += 1 }
        func at(_ k: Int) -> UInt8? { i + k < bytes.count ? bytes[i + k] : nil }
        guard let op = at(0) else { return nil }
        switch op {
        case 0xcc: return .breakpoint(length: i + 1)
        case 0x9b: return .fwait(length: i + 1)
        case 0xdb:
            switch at(1) {
            case 0xe2: return .fpu(.fnclex, length: i + 2)
            case 0xe3: return .fpu(.fninit, length: i + 2)
            default: return nil
            }
        case 0x0f:
            switch at(1) {
            case 0x77: return .fpu(.emms, length: i + 2)
            case 0x08, 0x09: return .skip(.wbinvd, length: i + 2)
            case 0x01:
                switch at(2) {
                case 0xca: return .alignmentCheck(set: false, length: i + 3)
                case 0xcb: return .alignmentCheck(set: true, length: i + 3)
                default: return nil
                }
            case 0xae:
                guard let modrm = at(2), modrm >= 0xe8 else { return nil }
                return .skip(.fence, length: i + 3)
            default: return nil
            }
        default: return nil
        }
    }
}

/// x87 state changes, applied to the FPU image from `KVM_GET_FPU`.
public enum X87 {
    /// FSW bits FNCLEX clears: the exception flags (0-5), stack fault (6),
    /// error summary (7) and busy (15).
    public static let fswClearMask: UInt16 = 0x80ff
    /// FSW.ES: an unmasked exception is pending.
    public static let fswErrorSummary: UInt16 = 0x0080
    /// FCW after FNINIT: all exceptions masked, 64-bit precision, round to nearest.
    public static let fcwDefault: UInt16 = 0x037f
}
