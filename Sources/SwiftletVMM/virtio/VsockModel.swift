import SwiftletMemory
import SwiftletVirtio

/// virtio-vsock behind the MMIO transport: queues rx (0), tx (1) and event
/// (2), served on the device event loop, with the host side in `VsockMuxer`.
///
/// Serving tx can queue packets for the guest (RESPONSE, RST, credit
/// updates), but the tx service runs under the transport's lock and cannot
/// serve rx itself: the muxer makes its poll fd readable instead, and the
/// loop's handler for that fd (`handlePollEvents`) serves rx.
final class VsockModel: VirtioDeviceModel, @unchecked Sendable {
    let muxer: VsockMuxer
    /// The transport this model sits behind, set once right after both are
    /// built (before any thread uses them). Weak: the transport owns the model.
    weak var transport: VirtioMMIOTransport?

    init(muxer: VsockMuxer) { self.muxer = muxer }

    var deviceID: UInt32 { VirtioVsock.deviceID }
    var deviceFeatures: UInt64 { muxer.deviceFeatures }
    var queueMaxSizes: [UInt16] { [VirtioVsock.queueSize, VirtioVsock.queueSize, VirtioVsock.queueSize] }

    func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) { muxer.readConfig(offset: offset, into: into) }
    /// `guest_cid` is read-only for the driver: ignore writes.
    func writeConfig(offset: Int, from: UnsafeRawBufferPointer) {}
    /// The driver reset the device: every connection closes.
    func reset() { muxer.reset() }

    func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        switch index {
        case VirtioVsock.rxQueue: return try muxer.serveRx(queue)
        case VirtioVsock.txQueue: return try muxer.serveTx(queue)
        case VirtioVsock.eventQueue: return try muxer.serveEvent(queue)
        default: return false
        }
    }

    /// The loop's handler for `muxer.pollFD`: socket events, then whatever
    /// they (or an earlier tx service) queued for the guest, then the tx
    /// queue if it was held back while the guest owed us rx buffers.
    func handlePollEvents() {
        guard let transport else { return }
        muxer.process()
        transport.serve(queue: VirtioVsock.rxQueue)
        if muxer.txNeedsService { transport.serve(queue: VirtioVsock.txQueue) }
    }

    /// Drops every connection and tells the guest with a TRANSPORT_RESET
    /// event (for snapshot restore).
    func transportReset() {
        muxer.transportReset()
        transport?.notifiers[VirtioVsock.eventQueue].signal()
    }
}
