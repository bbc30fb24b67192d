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
/// | LDMXCSR / STMXCSR | `0F AE /2`, `0F AE /3` | a 4-byte load or store of MXCSR, seen failing in `kernel_fpu_begin`: the operand is decoded and translated through the guest's page tables; a reserved bit gets #GP. A load is completed only when it leaves MXCSR unchanged, because on nested PVM the VMM cannot set guest FPU state |
///
/// The x87 fix-ups (FNCLEX, FNINIT, EMMS) write the FPU state with
/// `KVM_SET_FPU`; on nested PVM that was measured not to reach the guest for
/// MXCSR, so there they amount to skipping the instruction, which is exact
/// when no x87 exception flags are set (the case seen in Linux).
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
    /// LDMXCSR (`store == false`) or STMXCSR with its memory operand.
    case mxcsr(store: Bool, operand: MemoryOperand, length: Int)

    /// The instructions Swiftlet completes, for statistics and messages.
    public enum Instruction: String, Sendable, CaseIterable {
        case int3, fwait, fnclex, fninit, emms, clac, stac, fence, wbinvd, ldmxcsr, stmxcsr
    }

    /// Which instruction this fixup completes.
    public var instruction: Instruction {
        switch self {
        case let .skip(i, _), let .fpu(i, _): return i
        case .breakpoint: return .int3
        case .fwait: return .fwait
        case let .alignmentCheck(set, _): return set ? .stac : .clac
        case let .mxcsr(store, _, _): return store ? .stmxcsr : .ldmxcsr
        }
    }

    /// Decodes the instruction at the start of `bytes`, or nil if Swiftlet
    /// does not handle it. Only prefixes that cannot change these
    /// instructions' meaning (operand size, REX, FS/GS) are skipped.
    public static func decode(_ bytes: [UInt8]) -> EmulationFixup? {
        var i = 0
        var rex: UInt8 = 0
        var segment: UInt8?
        while i < bytes.count && i < 4 {
            let b = bytes[i]
            if b == 0x66 { rex = 0 } else if b == 0x64 || b == 0x65 { segment = b; rex = 0 } else if b & 0xf0 == 0x40 { rex = b } else { break }
            i += 1
        }
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
                guard let modrm = at(2) else { return nil }
                if modrm >= 0xe8 { return .skip(.fence, length: i + 3) }
                guard let (operand, reg, used) = MemoryOperand.decode(bytes, at: i + 2, rex: rex), reg & 7 == 2 || reg & 7 == 3 else { return nil }
                var op = operand
                op.segmentPrefix = segment
                return .mxcsr(store: reg & 7 == 3, operand: op, length: i + 2 + used)
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
