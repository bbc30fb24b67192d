import SwiftletPersist

extension Serial8250 {
    /// The registers a snapshot keeps (pending input is not kept: nothing
    /// is queued while the guest's agent waits for a job).
    public struct SavedState: Sendable, Equatable {
        public var ier: UInt8, lcr: UInt8, mcr: UInt8, scratch: UInt8, dll: UInt8, dlm: UInt8
        public var fifoEnabled: Bool, thrInterruptPending: Bool

        public init(ier: UInt8, lcr: UInt8, mcr: UInt8, scratch: UInt8, dll: UInt8, dlm: UInt8, fifoEnabled: Bool, thrInterruptPending: Bool) {
            (self.ier, self.lcr, self.mcr, self.scratch, self.dll, self.dlm) = (ier, lcr, mcr, scratch, dll, dlm)
            (self.fifoEnabled, self.thrInterruptPending) = (fifoEnabled, thrInterruptPending)
        }
    }
}

extension Serial8250.SavedState: PersistentState {
    public func save(to w: inout StateWriter) {
        for b in [ier, lcr, mcr, scratch, dll, dlm] { w.u8(b) }
        w.bool(fifoEnabled)
        w.bool(thrInterruptPending)
    }

    public init(from r: inout StateReader) throws(StateError) {
        self.init(ier: try r.u8(), lcr: try r.u8(), mcr: try r.u8(), scratch: try r.u8(), dll: try r.u8(), dlm: try r.u8(),
                  fifoEnabled: try r.bool(), thrInterruptPending: try r.bool())
    }
}
