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
        regs = try r.raw(regs)
        sregs = try r.raw(sregs)
        xsave = try r.raw(xsave)
        xcrs = try r.raw(xcrs)
        debugRegs = try r.raw(debugRegs)
        lapic = try r.raw(lapic)
        for _ in 0..<(try r.count(itemSize: 12, limit: Int(SWL_MAX_MSR_INDICES))) {
            msrs.append((index: try r.u32(), value: try r.u64()))
        }
        events = try r.raw(events)
        mpState = try r.raw(mpState)
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
        picMaster = try r.raw(picMaster)
        picSlave = try r.raw(picSlave)
        ioapic = try r.raw(ioapic)
        pit = try r.raw(pit)
        clock = try r.raw(clock)
    }
}
