import Testing
@testable import SwiftletVMM

/// The decoder that picks which failed instructions the VMM completes. Pure, no KVM.
struct EmulationFixupTests {
    @Test func decodesEachHandledInstruction() {
        #expect(EmulationFixup.decode([0xcc]) == .breakpoint(length: 1))
        #expect(EmulationFixup.decode([0x9b, 0xdb, 0xe2]) == .fwait(length: 1))
        #expect(EmulationFixup.decode([0xdb, 0xe2]) == .fpu(.fnclex, length: 2))
        #expect(EmulationFixup.decode([0xdb, 0xe3]) == .fpu(.fninit, length: 2))
        #expect(EmulationFixup.decode([0x0f, 0x77]) == .fpu(.emms, length: 2))
        #expect(EmulationFixup.decode([0x0f, 0x01, 0xca]) == .alignmentCheck(set: false, length: 3))
        #expect(EmulationFixup.decode([0x0f, 0x01, 0xcb]) == .alignmentCheck(set: true, length: 3))
        #expect(EmulationFixup.decode([0x0f, 0xae, 0xf0]) == .skip(.fence, length: 3))
        #expect(EmulationFixup.decode([0x0f, 0x09]) == .skip(.wbinvd, length: 2))
    }

    @Test func countsHarmlessPrefixesInTheLength() {
        #expect(EmulationFixup.decode([0x48, 0x0f, 0xae, 0xe8]) == .skip(.fence, length: 4))
        #expect(EmulationFixup.decode([0x66, 0xdb, 0xe2]) == .fpu(.fnclex, length: 3))
    }

    @Test func refusesEverythingElse() {
        #expect(EmulationFixup.decode([]) == nil)
        #expect(EmulationFixup.decode([0x0f]) == nil)
        #expect(EmulationFixup.decode([0x0f, 0x01]) == nil)
        #expect(EmulationFixup.decode([0x0f, 0xae, 0x28]) == nil) // xrstor [rax]: a memory form, not a fence
        #expect(EmulationFixup.decode([0xf3, 0x0f, 0xb8, 0xc1]) == nil) // popcnt: hidden by CPUID instead
        #expect(EmulationFixup.decode([0xdb, 0x04, 0x24]) == nil) // fild dword [rsp]
        #expect(EmulationFixup.decode([0x66, 0x66, 0x66, 0x66, 0x66, 0xcc]) == nil) // too many prefixes
    }
}

/// The machine's own kernel arguments never land in init's argv.
struct KernelCommandLineTests {
    @Test func insertsBeforeInitArguments() {
        #expect(KernelCommandLine.inserting(["a=1", "b"], into: "console=ttyS0 -- -c \"x -- y\"") == "console=ttyS0 a=1 b -- -c \"x -- y\"")
        #expect(KernelCommandLine.inserting(["a=1"], into: "console=ttyS0") == "console=ttyS0 a=1")
        #expect(KernelCommandLine.inserting([], into: "x -- y") == "x -- y")
        #expect(KernelCommandLine.inserting(["a"], into: "") == "a")
        // The spacing on either side of `--` stays as it was.
        #expect(KernelCommandLine.inserting(["a"], into: "x  --  y") == "x  a --  y")
        #expect(KernelCommandLine.inserting(["a"], into: "-- y") == "a -- y")
        #expect(KernelCommandLine.joining(["a", "", "b"]) == "a  b")
        #expect(KernelCommandLine.joining([]) == "")
    }
}

/// Memory operands of LDMXCSR/STMXCSR, decoded and resolved.
struct MXCSRDecodeTests {
    let regs: [UInt64] = (0..<16).map { UInt64($0) * 0x100 } // rax=0, rcx=0x100, ..., r15=0xf00

    @Test func baseIndexScaleDisplacement() throws {
        // ldmxcsr 0x4(%rax,%rbx,1): 0f ae 54 18 04 — the bytes seen failing in kernel_fpu_begin.
        let f = try #require(EmulationFixup.decode([0x0f, 0xae, 0x54, 0x18, 0x04]))
        guard case let .mxcsr(store, op, length) = f else { Issue.record("\(f)"); return }
        #expect(!store && length == 5)
        #expect(op.linearAddress(registers: regs, nextRIP: 0, fsBase: 0, gsBase: 0) == 0x304)
        // ldmxcsr 0x4(%rsp): 0f ae 54 24 04 (RSP base, no index).
        guard case let .mxcsr(_, op2, 5) = try #require(EmulationFixup.decode([0x0f, 0xae, 0x54, 0x24, 0x04])) else { Issue.record(); return }
        #expect(op2.linearAddress(registers: regs, nextRIP: 0, fsBase: 0, gsBase: 0) == 0x404)
    }

    @Test func ripRelativeREXAndSegment() throws {
        // stmxcsr 0x10(%rip): 0f ae 1d 10 00 00 00
        guard case let .mxcsr(true, op, 7) = try #require(EmulationFixup.decode([0x0f, 0xae, 0x1d, 0x10, 0, 0, 0])) else { Issue.record(); return }
        #expect(op.linearAddress(registers: regs, nextRIP: 0x1000, fsBase: 0, gsBase: 0) == 0x1010)
        // %gs:ldmxcsr -8(%r12): 65 41 0f ae 54 24 f8
        guard case let .mxcsr(false, op2, 7) = try #require(EmulationFixup.decode([0x65, 0x41, 0x0f, 0xae, 0x54, 0x24, 0xf8])) else { Issue.record(); return }
        #expect(op2.linearAddress(registers: regs, nextRIP: 0, fsBase: 0, gsBase: 0x10000) == 0x10000 + 0xc00 - 8)
    }

    @Test func otherGroup15FormsAndTruncationAreRefused() {
        #expect(EmulationFixup.decode([0x0f, 0xae, 0x28]) == nil) // xrstor
        #expect(EmulationFixup.decode([0x0f, 0xae, 0x54, 0x24]) == nil) // disp8 missing
        #expect(EmulationFixup.decode([0x0f, 0xae, 0x15, 0, 0]) == nil) // disp32 cut short
    }
}
