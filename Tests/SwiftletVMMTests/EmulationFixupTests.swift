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
    }
}
