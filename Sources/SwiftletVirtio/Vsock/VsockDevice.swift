import SwiftletMemory

// virtio-vsock behind the MMIO transport: queues rx (0), tx (1) and event
// (2), served on the device event loop, with the host side in `VsockMuxer`.
//
// Serving tx can queue packets for the guest (RESPONSE, RST, credit
// updates), but the tx service runs under the transport's service lock and
// holds only the tx queue, so it cannot serve rx itself: the muxer makes its
// poll fd readable instead, and the loop's handler for that fd
// (`handlePollEvents`) serves rx.
extension VsockMuxer: VirtioDevice {
    public var deviceID: UInt32 { VirtioVsock.deviceID }
    public var queueMaxSizes: [UInt16] { [VirtioVsock.queueSize, VirtioVsock.queueSize, VirtioVsock.queueSize] }

    public func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        switch index {
        case VirtioVsock.rxQueue: return try serveRx(queue)
        case VirtioVsock.txQueue: return try serveTx(queue)
        case VirtioVsock.eventQueue: return try serveEvent(queue)
        default: return false
        }
    }

    /// The event loop's handler for `pollFD`: socket events, then whatever
    /// they (or an earlier tx service) queued for the guest, then the tx
    /// queue if it was held back while the guest owed us rx buffers.
    public func handlePollEvents(_ transport: VirtioMMIOTransport) {
        process()
        transport.serve(queue: VirtioVsock.rxQueue)
        if txNeedsService { transport.serve(queue: VirtioVsock.txQueue) }
    }

    /// Drops every connection and tells the guest with a TRANSPORT_RESET
    /// event (for snapshot restore).
    public func transportReset(_ transport: VirtioMMIOTransport) {
        transportReset()
        transport.notifiers[VirtioVsock.eventQueue].signal()
    }
}
