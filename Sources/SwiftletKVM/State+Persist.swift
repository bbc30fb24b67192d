import CSwiftlet
import SwiftletPersist

// The KVM ABI structs are saved as their raw bytes, each prefixed with its
// size: a build whose struct differs in size refuses the state.

extension VcpuState: PersistentState {
    public func save(to w: inout StateWriter) {
        w.raw(regs)
        w.raw(sregs)
        w.raw(xsave)
        w.raw(xcrs)
        w.raw(debugRegs)
        w.raw(lapic)
        w.u32(UInt32(msrs.count))
        for msr in msrs {
            w.u32(msr.index)
            w.u64(msr.value)
        }
        w.raw(events)
        w.raw(mpState)
        w.u32(tscKHz)
    }

    public init(from r: inout StateReader) throws(StateError) {
        self.init()
        try load(from: &r)
    }

    /// Reads the state into this one, in place: a VcpuState is about 7 KiB,
    /// and every copy on the way would be one more page of a restored VMM's stack.
    public mutating func load(from r: inout StateReader) throws(StateError) {
        try r.raw(into: &regs)
        try r.raw(into: &sregs)
        try r.raw(into: &xsave)
        try r.raw(into: &xcrs)
        try r.raw(into: &debugRegs)
        try r.raw(into: &lapic)
        for _ in 0..<(try r.count(itemSize: 12, limit: Int(SWL_MAX_MSR_INDICES))) {
            msrs.append((index: try r.u32(), value: try r.u64()))
        }
        try r.raw(into: &events)
        try r.raw(into: &mpState)
        tscKHz = try r.u32()
    }
}

extension VMState: PersistentState {
    public func save(to w: inout StateWriter) {
        w.raw(picMaster)
        w.raw(picSlave)
        w.raw(ioapic)
        w.raw(pit)
        w.raw(clock)
    }

    public init(from r: inout StateReader) throws(StateError) {
        self.init()
        try r.raw(into: &picMaster)
        try r.raw(into: &picSlave)
        try r.raw(into: &ioapic)
        try r.raw(into: &pit)
        try r.raw(into: &clock)
    }
}
