import Glibc
import Testing
@testable import SwiftletVMM
import SwiftletTestSupport

/// The virtio-mmio registers as a guest sees them, through real MMIO exits.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct VirtioMMIOGuestTests {
    @Test("a guest reads the magic, version and device ID of a virtio-blk window")
    func identityRegisters() throws {
        var template = Array("/tmp/swiftlet-mmio-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        let path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { close(fd); unlink(path) }
        try #require(ftruncate(fd, 1 << 20) == 0)
        // For each of 0x000, 0x004, 0x008: mov rax, 0xc0001000+off; mov eax, [rax]; out the 4 bytes.
        var code: [UInt8] = []
        for off: UInt64 in [0, 4, 8] {
            code += [0x48, 0xb8] + Asm.le(0xc000_1000 + off, 8) + [0x8b, 0x00, 0x66, 0xba, 0xf8, 0x03]
            code += [0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee]
        }
        var config = MachineConfig(payload: .flat(code: code + Asm.long.haltForever, loadAddress: 0x10_0000, longMode: true))
        config.consoleOutputFD = -1
        config.captureConsole = true
        config.timeoutSeconds = 20
        config.memoryMiB = 32
        config.drives = [DriveConfig(path: path)]
        let report = try Machine.boot(config).run()
        try #require(report.console.count == 12, "console: \(report.console)")
        let words = report.console.withUnsafeBytes { b in (0..<3).map { b.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self) } }
        #expect(words == [0x7472_6976, 2, 2])
        #expect(report.exit == .poweredOff)
    }
}
