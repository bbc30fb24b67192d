import SwiftletPersist

extension VirtioMMIOTransport {
    /// What a snapshot keeps of the transport: the registers the driver
    /// wrote, and where each queue's rings and indices are.
    public struct SavedState: Equatable, Sendable {
        public struct Queue: Equatable, Sendable {
            public var size: UInt16
            public var desc: UInt64, driver: UInt64, device: UInt64
            public var ready: Bool
            public var nextAvail: UInt16, nextUsed: UInt16

            public init(size: UInt16, desc: UInt64, driver: UInt64, device: UInt64, ready: Bool, nextAvail: UInt16, nextUsed: UInt16) {
                (self.size, self.desc, self.driver, self.device) = (size, desc, driver, device)
                (self.ready, self.nextAvail, self.nextUsed) = (ready, nextAvail, nextUsed)
            }
        }
        public var status: UInt32
        public var deviceFeaturesSel: UInt32, driverFeaturesSel: UInt32
        public var driverFeatures: UInt64
        public var queueSel: UInt32
        public var interruptStatus: UInt32
        public var queues: [Queue]

        public init(status: UInt32, deviceFeaturesSel: UInt32, driverFeaturesSel: UInt32, driverFeatures: UInt64,
                    queueSel: UInt32, interruptStatus: UInt32, queues: [Queue]) {
            (self.status, self.deviceFeaturesSel, self.driverFeaturesSel) = (status, deviceFeaturesSel, driverFeaturesSel)
            (self.driverFeatures, self.queueSel, self.interruptStatus, self.queues) = (driverFeatures, queueSel, interruptStatus, queues)
        }
    }

    /// Reads the state. The vCPUs and the event loop must be stopped.
}

extension VirtioMMIOTransport.SavedState: PersistentState {
    public func save(to w: inout StateWriter) {
        w.u32(status)
        w.u32(deviceFeaturesSel)
        w.u32(driverFeaturesSel)
        w.u64(driverFeatures)
        w.u32(queueSel)
        w.u32(interruptStatus)
        w.u32(UInt32(queues.count))
        for q in queues { q.save(to: &w) }
    }

    public init(from r: inout StateReader) throws(StateError) {
        self.init(status: try r.u32(), deviceFeaturesSel: try r.u32(), driverFeaturesSel: try r.u32(),
                  driverFeatures: try r.u64(), queueSel: try r.u32(), interruptStatus: try r.u32(), queues: [])
        // No device has more queues than vsock's three; `restoreState` checks the exact count.
        for _ in 0..<(try r.count(itemSize: Queue.savedSize, limit: 8)) { queues.append(try Queue(from: &r)) }
    }
}

extension VirtioMMIOTransport.SavedState.Queue: PersistentState {
    /// The bytes `save` writes.
    static let savedSize = 2 + 8 * 3 + 1 + 2 + 2

    public func save(to w: inout StateWriter) {
        w.u16(size)
        w.u64(desc)
        w.u64(driver)
        w.u64(device)
        w.bool(ready)
        w.u16(nextAvail)
        w.u16(nextUsed)
    }

    public init(from r: inout StateReader) throws(StateError) {
        self.init(size: try r.u16(), desc: try r.u64(), driver: try r.u64(), device: try r.u64(),
                  ready: try r.bool(), nextAvail: try r.u16(), nextUsed: try r.u16())
    }
}
