import SwiftletMemory
import SwiftletVirtio

/// virtio-net behind the MMIO transport: rx (0) and tx (1), served on the
/// device event loop, with the frame handling in `NetDevice` and the TAP
/// kept open (and, for `--net auto`, alive) as long as the model lives.
final class NetModel: VirtioDeviceModel, @unchecked Sendable {
    let device: NetDevice
    let tap: TapDevice?
    /// Set once right after both are built. Weak: the transport owns the model.
    weak var transport: VirtioMMIOTransport?

    init(device: NetDevice, tap: TapDevice?) {
        self.device = device
        self.tap = tap
    }

    var deviceID: UInt32 { VirtioNet.deviceID }
    var deviceFeatures: UInt64 { device.deviceFeatures }
    var queueMaxSizes: [UInt16] { [VirtioNet.queueSize, VirtioNet.queueSize] }

    func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) { device.readConfig(offset: offset, into: into) }
    /// The MAC is read-only (no CTRL_MAC_ADDR): ignore writes.
    func writeConfig(offset: Int, from: UnsafeRawBufferPointer) {}
    func reset() { device.reset() }
    func activate(features: UInt64) { device.activate(features: features) }

    func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        switch index {
        case VirtioNet.rxQueue: return try device.serveRx(queue)
        case VirtioNet.txQueue: return try device.serveTx(queue)
        default: return false
        }
    }

    /// The loop's handler for `device.pollFD` (the TAP has frames): serve rx.
    /// When the device is not live the transport does not call it, and the
    /// TAP is unwatched until the guest's next rx notification, so a level-
    /// triggered fd never spins the loop.
    func handleTapReadable() {
        guard let transport else { return }
        let before = device.rxServices
        transport.serve(queue: VirtioNet.rxQueue)
        if device.rxServices == before { device.pause() }
    }
}

// The network types the CLI and the sandbox use, without a direct dependency on SwiftletVirtio.
public typealias MACAddress = SwiftletVirtio.MACAddress
public typealias NetError = SwiftletVirtio.NetError
public typealias NetAddressPlan = SwiftletVirtio.NetAddressPlan
