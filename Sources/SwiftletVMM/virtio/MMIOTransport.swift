import Synchronization
import SwiftletDevices
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio

/// A virtio device as the MMIO transport sees it: identity, features,
/// config space, and how to serve one of its queues.
protocol VirtioDeviceModel: AnyObject, Sendable {
    var deviceID: UInt32 { get }
    var deviceFeatures: UInt64 { get }
    var queueMaxSizes: [UInt16] { get }
    func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer)
    func writeConfig(offset: Int, from: UnsafeRawBufferPointer)
    /// Serves queue `index` until it is empty. Returns whether the driver
    /// asked to be interrupted. Throws when the queue itself is unusable.
    func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool
    /// The driver reset the device. Runs on the vCPU thread that took the
    /// status write, whose seccomp role (`vcpu`) allows no system call but
    /// eventfd writes: work that needs one (closing sockets) is handed to the
    /// device's event loop handler, as `VsockMuxer.reset` does.
    func reset()
    /// The driver set DRIVER_OK having accepted `features` (default: nothing to do).
    func activate(features: UInt64)
}

extension VirtioDeviceModel {
    func activate(features: UInt64) {}
}

/// The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout),
/// one 4 KiB window per device.
///
/// Register accesses come from vCPU threads; queues are served on the device
/// event loop thread. One lock guards the transport state and the device.
/// Every guest write is checked: queue setup only before the queue is ready,
/// features only before FEATURES_OK, no FEATURES_OK without VERSION_1 or with
/// features the device does not offer. A queue the guest set up badly marks
/// the device NEEDS_RESET instead of touching anything outside guest memory.
final class VirtioMMIOTransport: BusDevice, @unchecked Sendable {
    enum Reg {
        static let magic: UInt64 = 0x000, version: UInt64 = 0x004, deviceID: UInt64 = 0x008, vendorID: UInt64 = 0x00c
        static let deviceFeatures: UInt64 = 0x010, deviceFeaturesSel: UInt64 = 0x014
        static let driverFeatures: UInt64 = 0x020, driverFeaturesSel: UInt64 = 0x024
        static let queueSel: UInt64 = 0x030, queueNumMax: UInt64 = 0x034, queueNum: UInt64 = 0x038
        static let queueReady: UInt64 = 0x044, queueNotify: UInt64 = 0x050
        static let interruptStatus: UInt64 = 0x060, interruptACK: UInt64 = 0x064, status: UInt64 = 0x070
        static let queueDescLow: UInt64 = 0x080, queueDescHigh: UInt64 = 0x084
        static let queueDriverLow: UInt64 = 0x090, queueDriverHigh: UInt64 = 0x094
        static let queueDeviceLow: UInt64 = 0x0a0, queueDeviceHigh: UInt64 = 0x0a4
        static let configGeneration: UInt64 = 0x0fc, config: UInt64 = 0x100
    }
    enum Status {
        static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4, featuresOK: UInt32 = 8
        static let needsReset: UInt32 = 0x40, failed: UInt32 = 0x80
    }
    static let magicValue: UInt32 = 0x7472_6976 // "virt"
    static let vendor: UInt32 = 0x5457_4c53     // "SLWT"
    static let featureVersion1: UInt64 = 1 << 32
    static let featureEventIndex: UInt64 = 1 << 29
    static let featureIndirect: UInt64 = 1 << 28
    static let interruptUsedBuffer: UInt32 = 1, interruptConfigChange: UInt32 = 2
    /// Each device's MMIO window.
    static let windowSize: UInt64 = 0x1000

    struct QueueSetup {
        var size: UInt16
        var desc: UInt64 = 0, driver: UInt64 = 0, device: UInt64 = 0
        var queue: Virtqueue?
        var ready: Bool { queue != nil }
    }

    struct State {
        var status: UInt32 = 0
        var deviceFeaturesSel: UInt32 = 0
        var driverFeaturesSel: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSel: UInt32 = 0
        var queues: [QueueSetup]
    }

    let device: any VirtioDeviceModel
    let memory: GuestMemory
    /// Signalled to raise the device's interrupt (an irqfd into the in-kernel irqchip).
    let interrupt: EventFD
    /// One per queue: KVM signals it on a QueueNotify write (an ioeventfd).
    let notifiers: [EventFD]
    private let state: Mutex<State>
    private let interruptStatus = Atomic<UInt32>(0)

    init(device: any VirtioDeviceModel, memory: GuestMemory) throws(VMMError) {
        self.device = device
        self.memory = memory
        do throws(SystemError) {
            interrupt = try EventFD()
            var notifiers: [EventFD] = []
            for _ in device.queueMaxSizes { notifiers.append(try EventFD()) }
            self.notifiers = notifiers
        } catch {
            throw .system(error)
        }
        state = Mutex(State(queues: device.queueMaxSizes.map { QueueSetup(size: $0) }))
    }

    // MARK: Register reads

    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = 0 }
        if offset >= Reg.config {
            state.withLock { _ in device.readConfig(offset: Int(offset - Reg.config), into: data) }
            return
        }
        // Registers are 32-bit, read whole and aligned (virtio-mmio 4.2.2.1).
        guard data.count == 4, offset % 4 == 0 else { return }
        let value: UInt32 = state.withLock { s in
            switch offset {
            case Reg.magic: return Self.magicValue
            case Reg.version: return 2
            case Reg.deviceID: return device.deviceID
            case Reg.vendorID: return Self.vendor
            case Reg.deviceFeatures:
                let all = device.deviceFeatures | Self.featureVersion1
                return s.deviceFeaturesSel == 0 ? UInt32(truncatingIfNeeded: all)
                    : s.deviceFeaturesSel == 1 ? UInt32(truncatingIfNeeded: all >> 32) : 0
            case Reg.queueNumMax:
                return Int(s.queueSel) < s.queues.count ? UInt32(device.queueMaxSizes[Int(s.queueSel)]) : 0
            case Reg.queueReady:
                return Int(s.queueSel) < s.queues.count && s.queues[Int(s.queueSel)].ready ? 1 : 0
            case Reg.interruptStatus: return interruptStatus.load(ordering: .acquiring)
            case Reg.status: return s.status
            case Reg.configGeneration: return 0
            default: return 0
            }
        }
        data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    // MARK: Register writes

    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        if offset >= Reg.config {
            state.withLock { s in
                // Config writes only once the driver is there and before it gave up.
                if s.status & Status.driver != 0 && s.status & Status.failed == 0 {
                    device.writeConfig(offset: Int(offset - Reg.config), from: data)
                }
            }
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }
        let value = UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        switch offset {
        case Reg.queueNotify:
            // Normally KVM's ioeventfd takes this write before it exits to us.
            if Int(value) < notifiers.count { notifiers[Int(value)].signal() }
        case Reg.interruptACK:
            interruptStatus.bitwiseAnd(~value, ordering: .acquiringAndReleasing)
        default:
            var kickAll = false
            state.withLock { s in kickAll = writeRegister(offset, value, &s) }
            // After DRIVER_OK, serve whatever the driver queued before it.
            if kickAll { for n in notifiers { n.signal() } }
        }
    }

    /// Applies a register write. Returns true when the device just went live.
    private func writeRegister(_ offset: UInt64, _ value: UInt32, _ s: inout State) -> Bool {
        let q = Int(s.queueSel)
        let queueEditable = q < s.queues.count && !s.queues[q].ready && s.status & Status.driverOK == 0
        switch offset {
        case Reg.deviceFeaturesSel: s.deviceFeaturesSel = value
        case Reg.driverFeaturesSel: s.driverFeaturesSel = value
        case Reg.driverFeatures where s.status & Status.featuresOK == 0:
            if s.driverFeaturesSel == 0 {
                s.driverFeatures = (s.driverFeatures & ~0xffff_ffff) | UInt64(value)
            } else if s.driverFeaturesSel == 1 {
                s.driverFeatures = (s.driverFeatures & 0xffff_ffff) | (UInt64(value) << 32)
            }
        case Reg.queueSel: s.queueSel = value
        case Reg.queueNum where queueEditable:
            s.queues[q].size = UInt16(truncatingIfNeeded: min(value, UInt32(UInt16.max)))
        case Reg.queueDescLow where queueEditable: s.queues[q].desc = low(s.queues[q].desc, value)
        case Reg.queueDescHigh where queueEditable: s.queues[q].desc = high(s.queues[q].desc, value)
        case Reg.queueDriverLow where queueEditable: s.queues[q].driver = low(s.queues[q].driver, value)
        case Reg.queueDriverHigh where queueEditable: s.queues[q].driver = high(s.queues[q].driver, value)
        case Reg.queueDeviceLow where queueEditable: s.queues[q].device = low(s.queues[q].device, value)
        case Reg.queueDeviceHigh where queueEditable: s.queues[q].device = high(s.queues[q].device, value)
        case Reg.queueReady where q < s.queues.count:
            if value == 0 {
                s.queues[q].queue = nil
            } else if !s.queues[q].ready && s.status & Status.featuresOK != 0 {
                let setup = s.queues[q]
                let config = VirtqueueConfig(size: setup.size, descTable: setup.desc, availRing: setup.driver, usedRing: setup.device)
                do {
                    s.queues[q].queue = try Virtqueue(
                        memory: memory, config: config, maxSize: device.queueMaxSizes[q],
                        eventIndex: s.driverFeatures & Self.featureEventIndex != 0,
                        indirect: s.driverFeatures & Self.featureIndirect != 0)
                } catch {
                    needsReset(&s)
                }
            }
        case Reg.status:
            if value == 0 {
                reset(&s)
                return false
            }
            var new = value
            let newly = value & ~s.status
            if newly & Status.featuresOK != 0 {
                let offered = device.deviceFeatures | Self.featureVersion1
                // Refuse (leave FEATURES_OK clear) features never offered, or a legacy driver.
                if s.driverFeatures & ~offered != 0 || s.driverFeatures & Self.featureVersion1 == 0 {
                    new &= ~Status.featuresOK
                }
            }
            // DRIVER_OK only after FEATURES_OK.
            if newly & Status.driverOK != 0 && new & Status.featuresOK == 0 { new &= ~Status.driverOK }
            s.status = (s.status & Status.needsReset) | new
            let live = newly & Status.driverOK != 0 && new & Status.driverOK != 0
            if live { device.activate(features: s.driverFeatures) }
            return live
        default: break
        }
        return false
    }

    private func low(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & ~0xffff_ffff) | UInt64(v) }
    private func high(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & 0xffff_ffff) | (UInt64(v) << 32) }

    private func reset(_ s: inout State) {
        s = State(queues: device.queueMaxSizes.map { QueueSetup(size: $0) })
        interruptStatus.store(0, ordering: .releasing)
        device.reset()
    }

    /// The device cannot go on: tell the driver (NEEDS_RESET and a config interrupt).
    private func needsReset(_ s: inout State) {
        s.status |= Status.needsReset
        if s.status & Status.driverOK != 0 {
            interruptStatus.bitwiseOr(Self.interruptConfigChange, ordering: .acquiringAndReleasing)
            interrupt.signal()
        }
    }

    // MARK: Snapshot

    /// What a snapshot keeps of the transport: the registers the driver
    /// wrote, and where each queue's rings and indices are.
    struct SavedState: Equatable {
        struct Queue: Equatable {
            var size: UInt16
            var desc: UInt64, driver: UInt64, device: UInt64
            var ready: Bool
            var nextAvail: UInt16, nextUsed: UInt16
        }
        var status: UInt32
        var deviceFeaturesSel: UInt32, driverFeaturesSel: UInt32
        var driverFeatures: UInt64
        var queueSel: UInt32
        var interruptStatus: UInt32
        var queues: [Queue]
    }

    /// Reads the state. The vCPUs and the event loop must be stopped.
    func saveState() -> SavedState {
        state.withLock { s in
            SavedState(
                status: s.status, deviceFeaturesSel: s.deviceFeaturesSel, driverFeaturesSel: s.driverFeaturesSel,
                driverFeatures: s.driverFeatures, queueSel: s.queueSel, interruptStatus: interruptStatus.load(ordering: .acquiring),
                queues: s.queues.map { q in
                    SavedState.Queue(size: q.size, desc: q.desc, driver: q.driver, device: q.device, ready: q.ready,
                                     nextAvail: q.queue?.nextAvail ?? 0, nextUsed: q.queue?.nextUsed ?? 0)
                })
        }
    }

    /// Loads a saved state into a fresh transport, checking it as strictly
    /// as the driver's own register writes: the same queue count, only
    /// offered features, and every ready queue's rings inside guest memory.
    func restoreState(_ saved: SavedState) throws(SnapshotError) {
        let offered = device.deviceFeatures | Self.featureVersion1
        guard saved.queues.count == device.queueMaxSizes.count else {
            throw .mismatch("virtio device \(device.deviceID) has \(device.queueMaxSizes.count) queues, the snapshot \(saved.queues.count)")
        }
        guard saved.driverFeatures & ~offered == 0 else {
            throw .mismatch("virtio device \(device.deviceID): the snapshot's driver accepted features this device does not offer")
        }
        var new = State(queues: [])
        new.status = saved.status
        new.deviceFeaturesSel = saved.deviceFeaturesSel
        new.driverFeaturesSel = saved.driverFeaturesSel
        new.driverFeatures = saved.driverFeatures
        new.queueSel = saved.queueSel
        for (i, q) in saved.queues.enumerated() {
            var setup = QueueSetup(size: q.size, desc: q.desc, driver: q.driver, device: q.device)
            if q.ready {
                let config = VirtqueueConfig(size: q.size, descTable: q.desc, availRing: q.driver, usedRing: q.device)
                do {
                    setup.queue = try Virtqueue(
                        memory: memory, config: config, maxSize: device.queueMaxSizes[i],
                        eventIndex: saved.driverFeatures & Self.featureEventIndex != 0,
                        indirect: saved.driverFeatures & Self.featureIndirect != 0,
                        nextAvail: q.nextAvail, nextUsed: q.nextUsed)
                } catch {
                    throw .corrupt("virtio device \(device.deviceID) queue \(i): \(error)")
                }
            }
            new.queues.append(setup)
        }
        state.withLock { $0 = new }
        interruptStatus.store(saved.interruptStatus, ordering: .releasing)
        if saved.status & Status.driverOK != 0 { device.activate(features: saved.driverFeatures) }
    }

    // MARK: Queue service (event loop thread)

    /// Serves queue `index` after a notification.
    func serve(queue index: Int) {
        notifiers[index].drain()
        let raise: Bool = state.withLock { s in
            guard s.status & Status.driverOK != 0, s.status & Status.needsReset == 0,
                  index < s.queues.count, let queue = s.queues[index].queue else { return false }
            do {
                return try device.serve(queue: queue, index: index, memory: memory)
            } catch {
                needsReset(&s)
                return false
            }
        }
        if raise {
            interruptStatus.bitwiseOr(Self.interruptUsedBuffer, ordering: .acquiringAndReleasing)
            interrupt.signal()
        }
    }
}
