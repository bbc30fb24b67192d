import Synchronization
import SwiftletDevices
import SwiftletMemory
import SwiftletSys

/// A virtio device as the MMIO transport sees it: identity, features,
/// config space, and how to serve one of its queues. Block, net and vsock
/// conform directly. `serve`, `reset` and `activate` run under the
/// transport's service lock, one at a time; the config accessors under its
/// register lock.
public protocol VirtioDevice: AnyObject, Sendable {
    var deviceID: UInt32 { get }
    var deviceFeatures: UInt64 { get }
    var queueMaxSizes: [UInt16] { get }
    func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer)
    /// A driver write to the config space (the devices here have no writable field).
    func writeConfig(offset: Int, from: UnsafeRawBufferPointer)
    /// Serves queue `index` until it is empty. Returns whether the driver
    /// asked to be interrupted. Throws when the queue itself is unusable.
    func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool
    /// The driver reset the device, once any service in progress ended.
    /// Runs on the vCPU thread that took the status write, whose seccomp role (`vcpu`) allows no system call but
    /// eventfd writes: work that needs one (closing sockets) is handed to the
    /// device's event loop handler, as `VsockMuxer.reset` does.
    func reset()
    /// The driver set DRIVER_OK having accepted `features` (default: nothing to do).
    func activate(features: UInt64)
}

extension VirtioDevice {
    public func activate(features: UInt64) {}
    public func writeConfig(offset: Int, from: UnsafeRawBufferPointer) {}
}

/// A saved transport state that this device and guest memory cannot take.
public enum TransportRestoreError: Error, Equatable, Sendable {
    /// The saved device differs from this one (queue count, features).
    case mismatch(String)
    /// A saved queue does not fit guest memory.
    case corrupt(String)
}

/// The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout),
/// one 4 KiB window per device.
///
/// Register accesses come from vCPU threads; queues are served on the device
/// event loop thread. Two locks, never held together: the register lock
/// guards what the driver wrote, and the service lock guards what the event
/// loop serves (the live queues, and the device while it serves them). A
/// vCPU reading or writing a register therefore never waits behind a
/// device's I/O; it takes the service lock only to change what is served (a
/// queue made ready, DRIVER_OK, reset), and then waits for a service in
/// progress to end, so that once a reset write returns the device no longer
/// touches the old rings. InterruptStatus is an atomic, read with no lock.
///
/// Every guest write is checked: queue setup only before the queue is ready,
/// features only before FEATURES_OK, no FEATURES_OK without VERSION_1 or with
/// features the device does not offer. A queue the guest set up badly marks
/// the device NEEDS_RESET instead of touching anything outside guest memory.
public final class VirtioMMIOTransport: BusDevice, Sendable {
    public enum Reg {
        public static let magic: UInt64 = 0x000, version: UInt64 = 0x004, deviceID: UInt64 = 0x008, vendorID: UInt64 = 0x00c
        public static let deviceFeatures: UInt64 = 0x010, deviceFeaturesSel: UInt64 = 0x014
        public static let driverFeatures: UInt64 = 0x020, driverFeaturesSel: UInt64 = 0x024
        public static let queueSel: UInt64 = 0x030, queueNumMax: UInt64 = 0x034, queueNum: UInt64 = 0x038
        public static let queueReady: UInt64 = 0x044, queueNotify: UInt64 = 0x050
        public static let interruptStatus: UInt64 = 0x060, interruptACK: UInt64 = 0x064, status: UInt64 = 0x070
        public static let queueDescLow: UInt64 = 0x080, queueDescHigh: UInt64 = 0x084
        public static let queueDriverLow: UInt64 = 0x090, queueDriverHigh: UInt64 = 0x094
        public static let queueDeviceLow: UInt64 = 0x0a0, queueDeviceHigh: UInt64 = 0x0a4
        public static let configGeneration: UInt64 = 0x0fc, config: UInt64 = 0x100
    }
    public enum Status {
        public static let acknowledge: UInt32 = 1, driver: UInt32 = 2, driverOK: UInt32 = 4, featuresOK: UInt32 = 8
        public static let needsReset: UInt32 = 0x40, failed: UInt32 = 0x80
    }
    public static let magicValue: UInt32 = 0x7472_6976 // "virt"
    public static let vendor: UInt32 = 0x5457_4c53     // "SLWT"
    public static let interruptUsedBuffer: UInt32 = 1, interruptConfigChange: UInt32 = 2
    /// Each device's MMIO window.
    public static let windowSize: UInt64 = 0x1000

    /// A queue's registers, as the driver wrote them.
    struct QueueSetup {
        var size: UInt16
        var desc: UInt64 = 0, driver: UInt64 = 0, device: UInt64 = 0
        var ready = false
    }

    /// The registers (the register lock).
    struct Registers {
        var status: UInt32 = 0
        var deviceFeaturesSel: UInt32 = 0
        var driverFeaturesSel: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var queueSel: UInt32 = 0
        var queues: [QueueSetup]
    }

    /// What the event loop serves (the service lock): the device is live
    /// after DRIVER_OK, until a reset or NEEDS_RESET.
    struct Service {
        var live = false
        var queues: [Virtqueue?]
    }

    /// What a register write asks of the service side, done after the
    /// register lock is released.
    private enum Change {
        case none
        /// QueueReady: serve this queue (nil: stop serving it).
        case queue(Int, Virtqueue?)
        /// DRIVER_OK with these features.
        case live(UInt64)
        /// Status 0.
        case reset
        /// NEEDS_RESET: serve nothing more.
        case stop
    }

    public let device: any VirtioDevice
    let memory: GuestMemory
    /// Signalled to raise the device's interrupt (an irqfd into the in-kernel irqchip).
    public let interrupt: EventFD
    /// One per queue: KVM signals it on a QueueNotify write (an ioeventfd).
    public let notifiers: [EventFD]
    private let registers: Mutex<Registers>
    private let service: Mutex<Service>
    private let interruptStatus = Atomic<UInt32>(0)

    public init(device: any VirtioDevice, memory: GuestMemory) throws(SystemError) {
        self.device = device
        self.memory = memory
        interrupt = try EventFD()
        var notifiers: [EventFD] = []
        for _ in device.queueMaxSizes { notifiers.append(try EventFD()) }
        self.notifiers = notifiers
        registers = Mutex(Self.freshRegisters(device))
        service = Mutex(Self.freshService(device))
    }

    private static func freshRegisters(_ device: any VirtioDevice) -> Registers {
        Registers(queues: device.queueMaxSizes.map { QueueSetup(size: $0) })
    }

    private static func freshService(_ device: any VirtioDevice) -> Service {
        Service(queues: device.queueMaxSizes.map { _ in nil })
    }

    // MARK: Register reads

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        // SAFETY: `i` comes from `data.indices`.
        for i in data.indices { unsafe data[i] = 0 }
        if offset >= Reg.config {
            // SAFETY: the vCPU's MMIO bytes, valid for this call; the device bounds the offset.
            registers.withLock { _ in unsafe device.readConfig(offset: Int(offset - Reg.config), into: data) }
            return
        }
        // Registers are 32-bit, read whole and aligned (virtio-mmio 4.2.2.1).
        guard data.count == 4, offset % 4 == 0 else { return }
        if offset == Reg.interruptStatus {
            // SAFETY: `data.count == 4`, checked just above.
            unsafe data.storeBytes(of: interruptStatus.load(ordering: .acquiring).littleEndian, as: UInt32.self)
            return
        }
        let value: UInt32 = registers.withLock { s in
            switch offset {
            case Reg.magic: return Self.magicValue
            case Reg.version: return 2
            case Reg.deviceID: return device.deviceID
            case Reg.vendorID: return Self.vendor
            case Reg.deviceFeatures:
                let all = device.deviceFeatures | VirtioFeature.version1
                return s.deviceFeaturesSel == 0 ? UInt32(truncatingIfNeeded: all)
                    : s.deviceFeaturesSel == 1 ? UInt32(truncatingIfNeeded: all >> 32) : 0
            case Reg.queueNumMax:
                return Int(s.queueSel) < s.queues.count ? UInt32(device.queueMaxSizes[Int(s.queueSel)]) : 0
            case Reg.queueReady:
                return Int(s.queueSel) < s.queues.count && s.queues[Int(s.queueSel)].ready ? 1 : 0
            case Reg.status: return s.status
            case Reg.configGeneration: return 0
            default: return 0
            }
        }
        // SAFETY: only 4-byte accesses get here (narrower ones return early above), so `data` holds 4 bytes.
        unsafe data.storeBytes(of: value.littleEndian, as: UInt32.self)
    }

    // MARK: Register writes

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        if offset >= Reg.config {
            registers.withLock { s in
                // Config writes only once the driver is there and before it gave up.
                if s.status & Status.driver != 0 && s.status & Status.failed == 0 {
                    // SAFETY: `data` is the vCPU's MMIO bytes, valid for this call; the device bounds the offset.
                    unsafe device.writeConfig(offset: Int(offset - Reg.config), from: data)
                }
            }
            return
        }
        guard data.count == 4, offset % 4 == 0 else { return }
        let value = unsafe UInt32(littleEndian: data.loadUnaligned(as: UInt32.self))
        switch offset {
        case Reg.queueNotify:
            // Normally KVM's ioeventfd takes this write before it exits to us.
            if Int(value) < notifiers.count { notifiers[Int(value)].signal() }
        case Reg.interruptACK:
            interruptStatus.bitwiseAnd(~value, ordering: .acquiringAndReleasing)
        default:
            let change = registers.withLock { s in writeRegister(offset, value, &s) }
            switch change {
            case .none: break
            case let .queue(index, queue): service.withLock { $0.queues[index] = queue }
            case let .live(features):
                service.withLock { s in
                    device.activate(features: features)
                    s.live = true
                }
                // Serve whatever the driver queued before DRIVER_OK.
                for n in notifiers { n.signal() }
            case .reset:
                service.withLock { s in
                    s = Self.freshService(device)
                    device.reset()
                }
            case .stop: service.withLock { $0.live = false }
            }
        }
    }

    /// Applies a register write; returns what the service side must do.
    private func writeRegister(_ offset: UInt64, _ value: UInt32, _ s: inout Registers) -> Change {
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
                s.queues[q].ready = false
                return .queue(q, nil)
            }
            if !s.queues[q].ready && s.status & Status.featuresOK != 0 {
                do {
                    let queue = try makeQueue(s.queues[q], index: q, features: s.driverFeatures)
                    s.queues[q].ready = true
                    return .queue(q, queue)
                } catch {
                    return needsReset(&s)
                }
            }
        case Reg.status:
            if value == 0 {
                s = Self.freshRegisters(device)
                interruptStatus.store(0, ordering: .releasing)
                return .reset
            }
            var new = value
            let newly = value & ~s.status
            if newly & Status.featuresOK != 0 {
                let offered = device.deviceFeatures | VirtioFeature.version1
                // Refuse (leave FEATURES_OK clear) features never offered, or a legacy driver.
                if s.driverFeatures & ~offered != 0 || s.driverFeatures & VirtioFeature.version1 == 0 {
                    new &= ~Status.featuresOK
                }
            }
            // DRIVER_OK only after FEATURES_OK.
            if newly & Status.driverOK != 0 && new & Status.featuresOK == 0 { new &= ~Status.driverOK }
            s.status = (s.status & Status.needsReset) | new
            // Not live after NEEDS_RESET: only a reset brings the device back.
            if newly & Status.driverOK != 0 && new & Status.driverOK != 0 && s.status & Status.needsReset == 0 {
                return .live(s.driverFeatures)
            }
        default: break
        }
        return .none
    }

    private func low(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & ~0xffff_ffff) | UInt64(v) }
    private func high(_ old: UInt64, _ v: UInt32) -> UInt64 { (old & 0xffff_ffff) | (UInt64(v) << 32) }

    /// A queue on the rings `setup` names, checked against guest memory.
    private func makeQueue(_ setup: QueueSetup, index: Int, features: UInt64,
                           nextAvail: UInt16 = 0, nextUsed: UInt16 = 0) throws(VirtqueueError) -> Virtqueue {
        try Virtqueue(
            memory: memory,
            config: VirtqueueConfig(size: setup.size, descTable: setup.desc, availRing: setup.driver, usedRing: setup.device),
            maxSize: device.queueMaxSizes[index],
            eventIndex: features & VirtioFeature.ringEventIdx != 0,
            indirect: features & VirtioFeature.ringIndirectDesc != 0,
            nextAvail: nextAvail, nextUsed: nextUsed)
    }

    /// The device cannot go on: tell the driver (NEEDS_RESET and a config
    /// interrupt), and serve nothing more.
    private func needsReset(_ s: inout Registers) -> Change {
        s.status |= Status.needsReset
        if s.status & Status.driverOK != 0 {
            interruptStatus.bitwiseOr(Self.interruptConfigChange, ordering: .acquiringAndReleasing)
            interrupt.signal()
        }
        return .stop
    }

    // MARK: Snapshot

    /// What a snapshot keeps: `SavedState` (MMIOTransport+Persist.swift).
    public func saveState() -> SavedState {
        // SAFETY: the queues' indices are `@exclusivity(unchecked)` state, read here
        // under the service lock that every service of the queue holds.
        let indices = service.withLock { s in s.queues.map { q in q.map { unsafe (next: $0.nextAvail, used: $0.nextUsed) } } }
        return registers.withLock { s in
            SavedState(
                status: s.status, deviceFeaturesSel: s.deviceFeaturesSel, driverFeaturesSel: s.driverFeaturesSel,
                driverFeatures: s.driverFeatures, queueSel: s.queueSel, interruptStatus: interruptStatus.load(ordering: .acquiring),
                queues: s.queues.enumerated().map { i, q in
                    SavedState.Queue(size: q.size, desc: q.desc, driver: q.driver, device: q.device, ready: q.ready,
                                     nextAvail: indices[i]?.next ?? 0, nextUsed: indices[i]?.used ?? 0)
                })
        }
    }

    /// Loads a saved state into a fresh transport, checking it as strictly
    /// as the driver's own register writes: the same queue count, only
    /// offered features, and every ready queue's rings inside guest memory.
    public func restoreState(_ saved: SavedState) throws(TransportRestoreError) {
        let offered = device.deviceFeatures | VirtioFeature.version1
        guard saved.queues.count == device.queueMaxSizes.count else {
            throw .mismatch("virtio device \(device.deviceID) has \(device.queueMaxSizes.count) queues, the snapshot \(saved.queues.count)")
        }
        guard saved.driverFeatures & ~offered == 0 else {
            throw .mismatch("virtio device \(device.deviceID): the snapshot's driver accepted features this device does not offer")
        }
        var new = Registers(queues: [])
        new.status = saved.status
        new.deviceFeaturesSel = saved.deviceFeaturesSel
        new.driverFeaturesSel = saved.driverFeaturesSel
        new.driverFeatures = saved.driverFeatures
        new.queueSel = saved.queueSel
        var served = Service(queues: [])
        for (i, q) in saved.queues.enumerated() {
            let setup = QueueSetup(size: q.size, desc: q.desc, driver: q.driver, device: q.device, ready: q.ready)
            var queue: Virtqueue?
            if q.ready {
                do {
                    queue = try makeQueue(setup, index: i, features: saved.driverFeatures, nextAvail: q.nextAvail, nextUsed: q.nextUsed)
                } catch {
                    throw .corrupt("virtio device \(device.deviceID) queue \(i): \(error)")
                }
            }
            new.queues.append(setup)
            served.queues.append(queue)
        }
        let live = saved.status & Status.driverOK != 0 && saved.status & Status.needsReset == 0
        registers.withLock { $0 = new }
        interruptStatus.store(saved.interruptStatus, ordering: .releasing)
        service.withLock { s in
            s = served
            if saved.status & Status.driverOK != 0 { device.activate(features: saved.driverFeatures) }
            s.live = live
        }
    }

    // MARK: Queue service (event loop thread)

    /// Serves queue `index` after a notification, holding only the service
    /// lock. A queue the device finds unusable sets NEEDS_RESET.
    public func serve(queue index: Int) {
        notifiers[index].drain()
        enum Outcome { case idle, raise, broken }
        let outcome: Outcome = service.withLock { s in
            guard s.live, index < s.queues.count, let queue = s.queues[index] else { return .idle }
            do {
                return try device.serve(queue: queue, index: index, memory: memory) ? .raise : .idle
            } catch {
                s.live = false
                return .broken
            }
        }
        switch outcome {
        case .idle: break
        case .raise:
            interruptStatus.bitwiseOr(Self.interruptUsedBuffer, ordering: .acquiringAndReleasing)
            interrupt.signal()
        case .broken:
            _ = registers.withLock { needsReset(&$0) }
        }
    }
}
