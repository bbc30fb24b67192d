import CSwiftlet
import SwiftletDevices
import SwiftletKVM
import SwiftletPersist
import SwiftletVirtio

/// A vCPU as saved: the CPUID table it ran with, then KVM's state.
struct SavedVcpu {
    var cpuid: [kvm_cpuid_entry2]
    var state: VcpuState
}

/// The whole machine at a pause.
struct MachineState {
    var vcpus: [SavedVcpu]
    var vm: VMState
    var serial: Serial8250.SavedState
    var transports: [VirtioMMIOTransport.SavedState]
}

extension SavedVcpu: PersistentState {
    func save(to w: inout StateWriter) {
        w.u32(UInt32(cpuid.count))
        for e in cpuid { w.raw(e) }
        state.save(to: &w)
    }

    init(from r: inout StateReader) throws(StateError) {
        self.init(cpuid: [], state: VcpuState())
        try load(from: &r)
    }

    /// In place, like `VcpuState.load`.
    mutating func load(from r: inout StateReader) throws(StateError) {
        for _ in 0..<(try r.count(itemSize: MemoryLayout<kvm_cpuid_entry2>.size, limit: Int(SWL_MAX_CPUID_ENTRIES))) {
            cpuid.append(try r.raw(kvm_cpuid_entry2()))
        }
        try state.load(from: &r)
    }
}

extension MachineState: PersistentState {
    func save(to w: inout StateWriter) {
        w.u32(UInt32(vcpus.count))
        for v in vcpus { v.save(to: &w) }
        vm.save(to: &w)
        serial.save(to: &w)
        w.u32(UInt32(transports.count))
        for t in transports { t.save(to: &w) }
    }

    /// The caller checks the vCPU count against the manifest's.
    init(from r: inout StateReader) throws(StateError) {
        // Decoded in place in the array (see `VcpuState.load`).
        vcpus = Array(repeating: SavedVcpu(cpuid: [], state: VcpuState()), count: try r.count(itemSize: 64, limit: MachineConfig.maximumVcpus))
        for i in vcpus.indices { try vcpus[i].load(from: &r) }
        vm = try VMState(from: &r)
        serial = try Serial8250.SavedState(from: &r)
        transports = []
        for _ in 0..<(try r.count(itemSize: 28, limit: MachineConfig.maximumVirtioDevices)) {
            transports.append(try VirtioMMIOTransport.SavedState(from: &r))
        }
    }
}
