import SwiftletMemory
import SwiftletVirtio

/// virtio-blk behind the MMIO transport: one request queue, served on the
/// device event loop, with the request handling in `BlockBackend`.
final class BlockModel: VirtioDeviceModel, @unchecked Sendable {
    let backend: BlockBackend

    init(backend: BlockBackend) { self.backend = backend }

    var deviceID: UInt32 { VirtioBlock.deviceID }
    var deviceFeatures: UInt64 { backend.deviceFeatures }
    var queueMaxSizes: [UInt16] { [VirtioBlock.queueSize] }

    func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) { backend.readConfig(offset: offset, into: into) }
    /// The only writable field (writeback mode) is not offered: ignore writes.
    func writeConfig(offset: Int, from: UnsafeRawBufferPointer) {}
    func reset() {}

    func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        var served = false
        repeat {
            while let chain = try queue.popServable(returnedMalformed: { served = true }) {
                try queue.pushUsed(head: chain.head, length: backend.handle(chain, memory: memory))
                served = true
            }
        } while queue.enableNotification()
        return served && queue.needsInterrupt()
    }
}
