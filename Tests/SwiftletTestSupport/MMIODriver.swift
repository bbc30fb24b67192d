import Glibc
import SwiftletMemory
import SwiftletVirtio
import Synchronization

/// A device that records what the transport asks of it.
/// `@unchecked Sendable`: `failServe` is set before the transport serves; the rest is atomic.
package final class FakeDevice: VirtioDevice, @unchecked Sendable {
    package init() {}
    package let served = Atomic<Int>(0)
    package let resets = Atomic<Int>(0)
    /// While true, `serve` holds (a device busy with I/O); `serving` counts entries.
    package let holdServe = Atomic<Bool>(false)
    package let serving = Atomic<Int>(0)
    package var failServe = false
    package var deviceID: UInt32 { 2 }
    package var deviceFeatures: UInt64 { (1 << 9) | VirtioFeature.ringEventIdx }
    package var queueMaxSizes: [UInt16] { [8] }
    package func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) {
        for i in into.indices { into[i] = UInt8(truncatingIfNeeded: offset + i) }
    }
    package func writeConfig(offset: Int, from: UnsafeRawBufferPointer) {}
    package func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        if failServe { throw .availIndexJump(availIndex: 100, nextAvail: 0, size: 8) }
        serving.add(1, ordering: .releasing)
        while holdServe.load(ordering: .acquiring) { usleep(1000) }
        served.add(1, ordering: .relaxed)
        return true
    }
    package func reset() { resets.add(1, ordering: .relaxed) }
}

/// A guest driver's side of the virtio-mmio registers, for tests that
/// drive a transport by hand (`MMIODriver()`, or conform a suite to it).
package protocol MMIODriving {}

package struct MMIODriver: MMIODriving {
    package init() {}
}

extension MMIODriving {
    package typealias Reg = VirtioMMIOTransport.Reg
    package typealias Status = VirtioMMIOTransport.Status

    package func make() throws -> (VirtioMMIOTransport, FakeDevice, GuestMemory) {
        let memory = try GuestMemory(size: 1 << 20)
        let device = FakeDevice()
        return (try VirtioMMIOTransport(device: device, memory: memory), device, memory)
    }

    package func read(_ t: VirtioMMIOTransport, _ offset: UInt64) -> UInt32 {
        var v: UInt32 = 0xdead_beef
        withUnsafeMutableBytes(of: &v) { t.read(offset: offset, data: $0) }
        return v
    }

    package func write(_ t: VirtioMMIOTransport, _ offset: UInt64, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { t.write(offset: offset, data: $0) }
    }

    /// Acknowledge, negotiate `features`, set up queue 0 at valid addresses, DRIVER_OK.
    package func bringUp(_ t: VirtioMMIOTransport, features: UInt64 = VirtioFeature.version1) {
        write(t, Reg.status, Status.acknowledge | Status.driver)
        write(t, Reg.driverFeaturesSel, 0)
        write(t, Reg.driverFeatures, UInt32(truncatingIfNeeded: features))
        write(t, Reg.driverFeaturesSel, 1)
        write(t, Reg.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        write(t, Reg.status, Status.acknowledge | Status.driver | Status.featuresOK)
        write(t, Reg.queueSel, 0)
        write(t, Reg.queueNum, 8)
        write(t, Reg.queueDescLow, 0x1000)
        write(t, Reg.queueDriverLow, 0x2000)
        write(t, Reg.queueDeviceLow, 0x3000)
        write(t, Reg.queueReady, 1)
        write(t, Reg.status, Status.acknowledge | Status.driver | Status.featuresOK | Status.driverOK)
    }
}
