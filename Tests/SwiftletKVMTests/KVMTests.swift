import CSwiftlet
import Glibc
import SwiftletKVM
import SwiftletMemory
import SwiftletPersist
import SwiftletTestSupport
import Testing

/// The KVM layer alone, with no machine around it: opening the device,
/// typed errors that carry the call and errno, and a vCPU's state through
/// the ioctls and the snapshot codec.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct KVMTests {
    @Test("a path that is not KVM fails with the call and its errno, not a crash")
    func notKVM() {
        #expect(throws: KVMError.self) { _ = try Kvm(path: "/nonexistent/kvm") }
        #expect(throws: KVMError.self) { _ = try Kvm(path: "/dev/null") }
        do {
            _ = try Kvm(path: "/nonexistent/kvm")
        } catch {
            #expect("\(error)".contains("/nonexistent/kvm"))
        }
    }

    @Test("a vCPU's registers go in and come back out unchanged")
    func registersRoundTrip() throws {
        let kvm = try Kvm(path: "/dev/kvm")
        #expect(kvm.maxVcpus >= 1)
        let vm = try kvm.createVM()
        try vm.createIRQChip()
        let vcpu = try vm.createVcpu(id: 0)
        var regs = try vcpu.getRegs()
        regs.rip = 0x1234_5000
        regs.rax = 0xdead_beef
        regs.rflags = 0x2
        try vcpu.setRegs(regs)
        let back = try vcpu.getRegs()
        #expect(back.rip == 0x1234_5000 && back.rax == 0xdead_beef)
    }

    @Test("a vCPU's saved state survives the snapshot codec byte for byte, and restores into a fresh vCPU")
    func vcpuStatePersists() throws {
        let kvm = try Kvm(path: "/dev/kvm")
        let memory = try GuestMemory(size: 1 << 20)
        let vm = try kvm.createVM()
        try vm.createIRQChip()
        try vm.mapMemory(memory)
        let vcpu = try vm.createVcpu(id: 0)
        try vcpu.setCPUID(try kvm.supportedCPUID())
        var regs = try vcpu.getRegs()
        regs.rip = 0x7000
        regs.rbx = 42
        try vcpu.setRegs(regs)
        let saved = try vcpu.saveState(msrIndices: try kvm.msrIndexList())
        var w = StateWriter()
        saved.save(to: &w)
        var r = StateReader(w.bytes)
        let decoded = try VcpuState(from: &r)
        #expect(r.isAtEnd)
        var again = StateWriter()
        decoded.save(to: &again)
        #expect(again.bytes == w.bytes)
        #expect(decoded.regs.rip == 0x7000 && decoded.regs.rbx == 42)

        let fresh = try vm.createVcpu(id: 1)
        try fresh.setCPUID(try kvm.supportedCPUID())
        try fresh.restoreState(decoded)
        #expect(try fresh.getRegs().rbx == 42)
    }

    @Test("a truncated vCPU or VM state is refused by the codec")
    func truncatedStateIsRefused() throws {
        var w = StateWriter()
        VcpuState().save(to: &w)
        VMState().save(to: &w)
        let bytes = w.bytes
        for cut in [0, 1, 100, bytes.count / 2, bytes.count - 1] {
            var r = StateReader(Array(bytes[0..<cut]))
            #expect(throws: StateError.self) {
                _ = try VcpuState(from: &r)
                _ = try VMState(from: &r)
            }
        }
    }
}
