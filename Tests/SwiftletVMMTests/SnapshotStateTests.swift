import CSwiftlet
import SwiftletDevices
import SwiftletKVM
import SwiftletMemory
import SwiftletPersist
import SwiftletVirtio
import SwiftletX86
import Testing
@testable import SwiftletVMM
import SwiftletTestSupport

/// The snapshot's pieces that need no guest: the state codec, the transport's
/// save and restore, and the CPUID check. Whole snapshots are tested through
/// the CLI (SnapshotTests).
struct SnapshotStateTests {
    @Test func codecRoundTrip() throws {
        var w = StateWriter()
        w.u8(7)
        w.bool(true)
        w.u16(0xbeef)
        w.u32(0xdead_beef)
        w.u64(0x0123_4567_89ab_cdef)
        w.string("zero page")
        var regs = kvm_regs()
        regs.rip = 0xffff_ffff_8100_0000
        regs.r15 = 42
        w.raw(regs)
        var r = StateReader(w.bytes)
        #expect(try r.u8() == 7)
        #expect(try r.bool())
        #expect(try r.u16() == 0xbeef)
        #expect(try r.u32() == 0xdead_beef)
        #expect(try r.u64() == 0x0123_4567_89ab_cdef)
        #expect(try r.string() == "zero page")
        let back = try r.raw(kvm_regs())
        #expect(back.rip == regs.rip && back.r15 == 42)
        #expect(r.isAtEnd)
    }

    /// A state file that Swiftlet 0.8.0 wrote before each type saved its own
    /// state (`PersistentState`): one vCPU, a drive and vsock, paused at
    /// PARK. Every field must decode, and encode back to the same bytes.
    @Test("a snapshot state written before the per-type persist files decodes, and encodes to the same bytes")
    func stateFromBeforePersistFiles() throws {
        let path = String(#filePath.prefix(upTo: #filePath.lastIndex(of: "/")!)) + "/Fixtures/snapshot-state-0.8.0.bin"
        let bytes = try Snapshot.readStateFile(path)
        #expect(Array(bytes[0..<8]) == Snapshot.magic)
        let payload = Array(bytes[Snapshot.headerSize...])
        #expect(SHA256.hash(payload) == Array(bytes[(Snapshot.headerSize - 32)..<Snapshot.headerSize]))
        var r = StateReader(payload)
        let manifest = try Snapshot.decodeManifest(&r)
        let state = try Snapshot.decodeState(&r, manifest: manifest)
        #expect(r.isAtEnd)
        #expect(Snapshot.encode(manifest, state) == payload)
        #expect(manifest.swiftletVersion == "0.8.0")
        #expect(manifest.vcpuCount == 1 && state.vcpus.count == 1)
        #expect(manifest.drives.count == 1 && manifest.drives[0].identity != nil)
        #expect(manifest.vsockCID != nil)
        #expect(state.transports.count == 2)
        #expect(state.transports.allSatisfy { $0.status & VirtioMMIOTransport.Status.driverOK != 0 })
        #expect(state.vcpus[0].state.regs.rip != 0 && !state.vcpus[0].cpuid.isEmpty)
    }

    @Test("every truncation of a valid state is an error, never a crash")
    func truncatedStateIsRefused() throws {
        var w = StateWriter()
        w.string("abc")
        w.raw(kvm_sregs())
        w.u64(1)
        let bytes = w.bytes
        for n in 0..<bytes.count {
            var r = StateReader(Array(bytes[0..<n]))
            #expect(throws: StateError.self) {
                _ = try r.string()
                _ = try r.raw(kvm_sregs())
                _ = try r.u64()
            }
        }
    }

    @Test("a hostile count or length is refused before anything is allocated")
    func hostileCounts() throws {
        var w = StateWriter()
        w.u32(0xffff_ffff)
        var r = StateReader(w.bytes)
        #expect(throws: StateError.self) { _ = try r.count(itemSize: 8, limit: 1 << 20) }
        r = StateReader(w.bytes)
        #expect(throws: StateError.self) { _ = try r.bytes() }
        // A struct of the wrong size.
        var s = StateWriter()
        s.bytes([UInt8](repeating: 0, count: 12))
        r = StateReader(s.bytes)
        #expect(throws: StateError.self) { _ = try r.raw(kvm_regs()) }
        // Booleans are 0 or 1.
        r = StateReader([2])
        #expect(throws: StateError.self) { _ = try r.bool() }
    }

    @Test("a transport's registers and queue indices survive save and restore into a fresh transport")
    func transportRoundTrip() throws {
        let helper = MMIODriver()
        let (t, _, memory) = try helper.make()
        helper.bringUp(t, features: VirtioFeature.version1 | VirtioFeature.ringEventIdx)
        var saved = t.saveState()
        saved.queues[0].nextAvail = 5
        saved.queues[0].nextUsed = 4
        let fresh = try VirtioMMIOTransport(device: FakeDevice(), memory: memory)
        try fresh.restoreState(saved)
        let again = fresh.saveState()
        #expect(again == saved)
        #expect(helper.read(fresh, VirtioMMIOTransport.Reg.status) & VirtioMMIOTransport.Status.driverOK != 0)
        fresh.write(offset: VirtioMMIOTransport.Reg.queueSel, data: UnsafeRawBufferPointer(start: [UInt32(0)], count: 4))
        #expect(helper.read(fresh, VirtioMMIOTransport.Reg.queueReady) == 1)
    }

    @Test("a saved queue outside guest memory, features never offered, or the wrong queue count are refused")
    func hostileTransportState() throws {
        let helper = MMIODriver()
        let (t, _, memory) = try helper.make()
        helper.bringUp(t)
        let good = t.saveState()
        var outside = good
        outside.queues[0].desc = 1 << 40
        var features = good
        features.driverFeatures |= 1 << 50
        var queues = good
        queues.queues.append(queues.queues[0])
        var size = good
        size.queues[0].size = 3
        for bad in [outside, features, queues, size] {
            let fresh = try VirtioMMIOTransport(device: FakeDevice(), memory: memory)
            #expect(throws: TransportRestoreError.self) { try fresh.restoreState(bad) }
        }
    }

    @Test("the serial port's registers survive save and restore")
    func serialRoundTrip() {
        let a = Serial8250(output: { _ in }, raiseInterrupt: {})
        for (port, value) in [(3, 0x83), (0, 0x01), (1, 0x00), (3, 0x03), (1, 0x05), (4, 0x0b), (7, 0x5a)] as [(UInt64, UInt8)] {
            a.write(offset: port, data: UnsafeRawBufferPointer(start: [value], count: 1))
        }
        let b = Serial8250(output: { _ in }, raiseInterrupt: {})
        b.restoreState(a.saveState())
        #expect(b.saveState() == a.saveState())
        #expect(b.saveState().scratch == 0x5a && b.saveState().dll == 0x01)
    }

    func entry(_ leaf: UInt32, _ sub: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = leaf
        e.index = sub
        e.flags = leaf == 7 || leaf == 0xd ? UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) : 0
        (e.eax, e.ebx, e.ecx, e.edx) = (eax, ebx, ecx, edx)
        return e
    }

    @Test("CPUID: a guest may resume where every feature it saw is present, not where one is missing or sizes differ")
    func cpuidCompatibility() {
        let vendor = entry(0, ebx: 0x756e_6547, ecx: 0x6c65_746e, edx: 0x4965_6e69)
        let snapshot = [vendor, entry(1, ecx: 0b1010, edx: 0b1), entry(7, ebx: 1 << 5), entry(0xd, eax: 7, ecx: 832)]
        let superset = [vendor, entry(1, ecx: 0b1110, edx: 0b11), entry(7, ebx: (1 << 5) | (1 << 16)), entry(0xd, eax: 0xe7, ecx: 832)]
        #expect(CPUIDCompatibility.mismatch(snapshot: snapshot, host: snapshot) == nil)
        #expect(CPUIDCompatibility.mismatch(snapshot: snapshot, host: superset) == nil)
        let noAVX2 = [vendor, entry(1, ecx: 0b1010, edx: 0b1), entry(7, ebx: 0), entry(0xd, eax: 7, ecx: 832)]
        #expect(CPUIDCompatibility.mismatch(snapshot: snapshot, host: noAVX2)?.contains("leaf 0x7.0 ebx") == true)
        let biggerXSAVE = [vendor, entry(1, ecx: 0b1010, edx: 0b1), entry(7, ebx: 1 << 5), entry(0xd, eax: 7, ecx: 2688)]
        #expect(CPUIDCompatibility.mismatch(snapshot: snapshot, host: biggerXSAVE)?.contains("leaf 0xd.0 ecx") == true)
        let amd = [entry(0, ebx: 0x6874_7541, ecx: 0x444d_4163, edx: 0x6974_6e65)] + snapshot.dropFirst()
        #expect(CPUIDCompatibility.mismatch(snapshot: snapshot, host: amd) != nil)
    }
}
