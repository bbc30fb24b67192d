import Glibc
import SwiftletMemory
@testable import SwiftletVirtio
import Synchronization
import Testing
import SwiftletTestSupport

/// The virtio-mmio register protocol, driven as a guest driver would.
struct MMIOTransportTests: MMIODriving {
    typealias Reg = VirtioMMIOTransport.Reg
    typealias Status = VirtioMMIOTransport.Status

    @Test func identityAndFeatures() throws {
        let (t, _, _) = try make()
        #expect(read(t, Reg.magic) == 0x7472_6976)
        #expect(read(t, Reg.version) == 2)
        #expect(read(t, Reg.deviceID) == 2)
        write(t, Reg.deviceFeaturesSel, 1)
        #expect(read(t, Reg.deviceFeatures) == 1) // VERSION_1 is bit 32
        write(t, Reg.deviceFeaturesSel, 7)
        #expect(read(t, Reg.deviceFeatures) == 0)
        #expect(read(t, Reg.queueNumMax) == 8)
        write(t, Reg.queueSel, 3)
        #expect(read(t, Reg.queueNumMax) == 0) // no such queue
    }

    @Test func unalignedOrNarrowRegisterAccessIsIgnored() throws {
        let (t, _, _) = try make()
        var b: UInt8 = 0xff
        withUnsafeMutableBytes(of: &b) { t.read(offset: Reg.magic, data: $0) }
        #expect(b == 0)
        var v: UInt32 = 0xff
        withUnsafeMutableBytes(of: &v) { t.read(offset: Reg.magic + 2, data: $0) }
        #expect(v == 0)
        // Config space takes any width.
        var c: UInt16 = 0
        withUnsafeMutableBytes(of: &c) { t.read(offset: Reg.config + 4, data: $0) }
        #expect(c == 0x0504)
    }

    @Test func featuresOKIsRefusedWithoutVersion1OrWithUnofferedBits() throws {
        let (t, _, _) = try make()
        write(t, Reg.status, Status.acknowledge | Status.driver)
        write(t, Reg.driverFeatures, 1 << 9) // no VERSION_1: a legacy driver
        write(t, Reg.status, Status.acknowledge | Status.driver | Status.featuresOK)
        #expect(read(t, Reg.status) & Status.featuresOK == 0)
        write(t, Reg.status, 0)
        write(t, Reg.status, Status.acknowledge | Status.driver)
        write(t, Reg.driverFeaturesSel, 1)
        write(t, Reg.driverFeatures, 1 | (1 << 3)) // VERSION_1 plus bit 35, never offered
        write(t, Reg.status, Status.acknowledge | Status.driver | Status.featuresOK)
        #expect(read(t, Reg.status) & Status.featuresOK == 0)
    }

    @Test("registers, InterruptStatus included, answer while the device serves; a reset waits for the service to end")
    func registersDoNotWaitBehindAService() async throws {
        let (t, device, _) = try make()
        bringUp(t)
        device.holdServe.store(true, ordering: .releasing)
        let service = Task.detached { t.serve(queue: 0) }
        while device.serving.load(ordering: .acquiring) == 0 { usleep(1000) }
        #expect(read(t, Reg.status) & Status.driverOK != 0)
        #expect(read(t, Reg.interruptStatus) == 0)
        #expect(read(t, Reg.queueReady) == 1)
        write(t, Reg.interruptACK, 1)
        // Once a reset write returns, the device no longer touches the old rings.
        let reset = Task.detached { write(t, Reg.status, 0) }
        usleep(50_000)
        #expect(device.resets.load(ordering: .acquiring) == 0)
        device.holdServe.store(false, ordering: .releasing)
        await service.value
        await reset.value
        #expect(device.served.load(ordering: .relaxed) == 1)
        #expect(device.resets.load(ordering: .acquiring) == 1)
        #expect(read(t, Reg.status) == 0)
    }

    @Test func notificationServesAndRaisesTheInterrupt() throws {
        let (t, device, _) = try make()
        bringUp(t)
        #expect(read(t, Reg.status) & Status.driverOK != 0)
        #expect(read(t, Reg.queueReady) == 1)
        t.serve(queue: 0)
        #expect(device.served.load(ordering: .relaxed) == 1)
        #expect(read(t, Reg.interruptStatus) == 1)
        #expect(t.interrupt.drain())
        write(t, Reg.interruptACK, 1)
        #expect(read(t, Reg.interruptStatus) == 0)
    }

    @Test func queueSetupIsFrozenOnceReady() throws {
        let (t, device, _) = try make()
        bringUp(t)
        write(t, Reg.queueDescLow, 0xdead_0000) // ignored: the queue is live
        write(t, Reg.queueNum, 4)
        t.serve(queue: 0)
        #expect(device.served.load(ordering: .relaxed) == 1)
        #expect(read(t, Reg.status) & Status.needsReset == 0)
    }

    @Test func badQueueAddressesMarkNeedsReset() throws {
        let (t, device, _) = try make()
        write(t, Reg.status, Status.acknowledge | Status.driver)
        write(t, Reg.driverFeaturesSel, 1)
        write(t, Reg.driverFeatures, 1)
        write(t, Reg.status, Status.acknowledge | Status.driver | Status.featuresOK)
        write(t, Reg.queueNum, 8)
        write(t, Reg.queueDescLow, 0xffff_f000) // outside the 1 MiB of guest memory
        write(t, Reg.queueDescHigh, 0x7fff)
        write(t, Reg.queueReady, 1)
        #expect(read(t, Reg.queueReady) == 0)
        #expect(read(t, Reg.status) & Status.needsReset != 0)
        t.serve(queue: 0)
        #expect(device.served.load(ordering: .relaxed) == 0)
    }

    @Test func aQueueThatBreaksMidUseMarksNeedsResetAndStopsService() throws {
        let (t, device, _) = try make()
        bringUp(t)
        device.failServe = true
        t.serve(queue: 0)
        #expect(read(t, Reg.status) & Status.needsReset != 0)
        #expect(read(t, Reg.interruptStatus) & VirtioMMIOTransport.interruptConfigChange != 0)
        device.failServe = false
        t.serve(queue: 0)
        #expect(device.served.load(ordering: .relaxed) == 0)
    }

    @Test func resetInTheMiddleOfUseStartsOver() throws {
        let (t, device, _) = try make()
        bringUp(t)
        t.serve(queue: 0)
        write(t, Reg.status, 0)
        #expect(device.resets.load(ordering: .relaxed) == 1)
        #expect(read(t, Reg.status) == 0)
        #expect(read(t, Reg.queueReady) == 0)
        #expect(read(t, Reg.interruptStatus) == 0)
        t.serve(queue: 0) // nothing is live any more
        #expect(device.served.load(ordering: .relaxed) == 1)
        bringUp(t) // and the driver can bring it up again
        t.serve(queue: 0)
        #expect(device.served.load(ordering: .relaxed) == 2)
    }

    @Test func notifyOfAnUnknownQueueIsHarmless() throws {
        let (t, _, _) = try make()
        bringUp(t)
        write(t, Reg.queueNotify, 5)
        write(t, Reg.queueNotify, 0xffff_ffff)
        write(t, 0xffc, 1) // unknown register
        #expect(read(t, Reg.status) & Status.needsReset == 0)
    }
}
