import Glibc
import Testing
@testable import SwiftletVMM

/// Hand-assembled guests, a few bytes each, that check one exit path of the
/// VMM at a time, in real mode or in long mode. Each runs in well under a
/// second, even where guest ring 0 is emulated.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct TinyGuestTests {
    /// Long-mode code loads at 1 MiB, inside the identity map.
    static let longModeBase: UInt64 = 0x10_0000
    /// Real-mode code loads at 0x1000, inside the first 64 KiB segment.
    static let realModeBase: UInt64 = 0x1000

    func run(_ code: [UInt8], longMode: Bool, timeout: Double = 20, vcpus: Int = 1) throws -> RunReport {
        var config = MachineConfig(payload: .flat(code: code, loadAddress: longMode ? Self.longModeBase : Self.realModeBase, longMode: longMode))
        config.consoleOutputFD = -1
        config.captureConsole = true
        config.timeoutSeconds = timeout
        config.memoryMiB = 32
        config.vcpuCount = vcpus
        let machine = try Machine(config: config)
        return try machine.run()
    }

    @Test("real mode: UART output, then an i8042 reset with the APIC off is a clean reboot")
    func realModeSerialAndReset() throws {
        let code = Asm.real.serial("Hi\n") + Asm.real.i8042Reset + Asm.hang
        let report = try run(code, longMode: false)
        #expect(String(decoding: report.console, as: UTF8.self) == "Hi\n")
        #expect(report.exit == .rebooted)
        #expect(report.exits.io >= 4)
        #expect(report.firstRunMicros > 0)
    }

    @Test("long mode: the boot-timer write is recorded, and cli;hlt is a power-off")
    func bootTimerAndPowerOff() throws {
        let code = Asm.long.bootTimer + Asm.long.serial("ok\n") + Asm.long.haltForever
        let report = try run(code, longMode: true)
        #expect(report.exit == .poweredOff)
        #expect(report.bootTimerMicros != nil)
        #expect(String(decoding: report.console, as: UTF8.self) == "ok\n")
    }

    @Test("long mode: a reset with the local APIC enabled is a panic")
    func resetWithAPICEnabledIsPanic() throws {
        let code = Asm.long.enableLocalAPIC + Asm.long.i8042Reset + Asm.hang
        let report = try run(code, longMode: true)
        #expect(report.exit == .panicked)
    }

    @Test("long mode: an exception with no usable IDT triple-faults")
    func tripleFault() throws {
        let code: [UInt8] = [0x0f, 0x0b] // ud2, with the boot IDT holding only a null gate
        let report = try run(code, longMode: true)
        #expect(report.exit == .tripleFault(vcpu: 0))
    }

    @Test("long mode: INT3 reaches the guest's #BP handler (completed by the VMM on nested PVM)")
    func int3ReachesHandler() throws {
        // The handler sits right after the IDT setup code; it prints "B" and halts.
        let report = try run(Asm.long.int3WithHandler(base: Self.longModeBase), longMode: true)
        #expect(String(decoding: report.console, as: UTF8.self) == "B")
        #expect(report.exit == .poweredOff)
    }

    @Test("long mode: x87 and SMAP instructions the PVM emulator lacks still complete")
    func emulationFixups() throws {
        // fnclex; fninit; fwait; emms; lfence; mfence; sfence; then report and halt.
        let body: [UInt8] = [0xdb, 0xe2, 0xdb, 0xe3, 0x9b, 0x0f, 0x77, 0x0f, 0xae, 0xe8, 0x0f, 0xae, 0xf0, 0x0f, 0xae, 0xf8]
        let report = try run(body + Asm.long.serial("x87\n") + Asm.long.haltForever, longMode: true)
        #expect(String(decoding: report.console, as: UTF8.self) == "x87\n")
        #expect(report.exit == .poweredOff)
    }

    @Test("a guest that spins is stopped by the timeout")
    func timeout() throws {
        let report = try run(Asm.hang, longMode: false, timeout: 0.3)
        guard case let .stopped(why) = report.exit else {
            Issue.record("expected a timeout, got \(report.exit)")
            return
        }
        #expect(why.hasPrefix("timeout"))
    }

    @Test("SMP: two vCPUs, the AP never started, the BSP powers off")
    func smpPowerOff() throws {
        let report = try run(Asm.long.serial("2\n") + Asm.long.haltForever, longMode: true, vcpus: 2)
        #expect(report.exit == .poweredOff)
    }
}

/// A few x86 instructions, assembled by hand.
enum Asm {
    /// jmp $ — spin forever.
    static let hang: [UInt8] = [0xeb, 0xfe]

    enum real {
        /// mov dx, 0x3f8; then mov al, c; out dx, al for each byte.
        static func serial(_ text: String) -> [UInt8] {
            var code: [UInt8] = [0xba, 0xf8, 0x03]
            for b in text.utf8 { code += [0xb0, b, 0xee] }
            return code
        }
        /// mov al, 0xfe; out 0x64, al.
        static let i8042Reset: [UInt8] = [0xb0, 0xfe, 0xe6, 0x64]
    }

    enum long {
        /// mov dx, 0x3f8 (with the operand-size prefix); then mov al, c; out dx, al.
        static func serial(_ text: String) -> [UInt8] {
            var code: [UInt8] = [0x66, 0xba, 0xf8, 0x03]
            for b in text.utf8 { code += [0xb0, b, 0xee] }
            return code
        }
        /// mov rax, 0xC0000000; mov byte [rax], 123.
        static let bootTimer: [UInt8] = [0x48, 0xb8, 0x00, 0x00, 0x00, 0xc0, 0, 0, 0, 0, 0xc6, 0x00, 123]
        /// cli; hlt; jmp back to hlt.
        static let haltForever: [UInt8] = [0xfa, 0xf4, 0xeb, 0xfd]
        /// mov rax, 0xFEE000F0; mov dword [rax], 0x1ff — software-enable the local APIC.
        static let enableLocalAPIC: [UInt8] = [0x48, 0xb8, 0xf0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0, 0xc7, 0x00, 0xff, 0x01, 0x00, 0x00]
        /// mov al, 0xfe; out 0x64, al.
        static let i8042Reset: [UInt8] = [0xb0, 0xfe, 0xe6, 0x64]

        /// Builds an IDT with a #BP gate, loads it, executes INT3; the handler prints "B" and halts.
        static func int3WithHandler(base: UInt64) -> [UInt8] {
            // Layout: [code][pad to +0x100: handler][+0x200: IDTR][+0x300: IDT, 4 gates].
            let handlerOffset: UInt64 = 0x100, idtrOffset: UInt64 = 0x200, idtOffset: UInt64 = 0x300
            var code: [UInt8] = []
            // mov rax, base+idtrOffset; lidt [rax]; int3; jmp $
            code += [0x48, 0xb8] + le(base + idtrOffset, 8) + [0x0f, 0x01, 0x18, 0xcc] + Asm.hang
            var image = code + [UInt8](repeating: 0x90, count: Int(handlerOffset) - code.count)
            image += serial("B") + haltForever
            image += [UInt8](repeating: 0, count: Int(idtrOffset) - image.count)
            image += le(4 * 16 - 1, 2) + le(base + idtOffset, 8)
            image += [UInt8](repeating: 0, count: Int(idtOffset) - image.count)
            let handler = base + handlerOffset
            for vector in 0..<4 {
                if vector == 3 {
                    // 64-bit interrupt gate: offset 15:0, selector 0x08, IST 0, type 0x8E, offset 31:16, offset 63:32, reserved.
                    image += le(handler & 0xffff, 2) + le(0x08, 2) + [0, 0x8e] + le((handler >> 16) & 0xffff, 2) + le(handler >> 32, 4) + le(0, 4)
                } else {
                    image += [UInt8](repeating: 0, count: 16)
                }
            }
            return image
        }
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
