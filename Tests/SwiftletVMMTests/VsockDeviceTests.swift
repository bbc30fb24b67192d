import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio
import Testing
@testable import SwiftletVirtio
@testable import SwiftletVMM

/// virtio-vsock behind the MMIO transport, driven through its registers:
/// the device's queue routing, the poll-fd handler, reset and the
/// transport-reset event. No VM: guest memory and rings are written by hand.
@Suite("Vsock device on the MMIO transport")
struct VsockDeviceTests {
    typealias Reg = VirtioMMIOTransport.Reg
    typealias Status = VirtioMMIOTransport.Status

    /// Queue `q` (size 8): descriptors at 0x1000 + q*0x3000, then the rings.
    static func rings(_ q: Int) -> (desc: UInt64, avail: UInt64, used: UInt64) {
        let base = 0x1000 + UInt64(q) * 0x3000
        return (base, base + 0x1000, base + 0x2000)
    }

    final class Rig {
        let dir: String
        let memory: GuestMemory
        let muxer: VsockMuxer
        let transport: VirtioMMIOTransport
        var availIdx = [UInt16](repeating: 0, count: 3)

        init() throws {
            var template = Array("/tmp/swiftlet-vsock-vmm-XXXXXX".utf8CString)
            _ = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
            dir = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            memory = try GuestMemory(size: 1 << 20)
            muxer = try VsockMuxer(guestCID: 42, udsPath: dir + "/v.sock")
            transport = try VirtioMMIOTransport(device: muxer, memory: memory)
        }

        deinit {
            muxer.close()
            unlink(dir + "/v.sock_5000")
            rmdir(dir)
        }

        func read(_ offset: UInt64) -> UInt32 {
            var v: UInt32 = 0
            withUnsafeMutableBytes(of: &v) { transport.read(offset: offset, data: $0) }
            return v
        }

        func write(_ offset: UInt64, _ value: UInt32) {
            var v = value
            withUnsafeBytes(of: &v) { transport.write(offset: offset, data: $0) }
        }

        func bringUp() {
            write(Reg.status, Status.acknowledge | Status.driver)
            write(Reg.driverFeaturesSel, 1)
            write(Reg.driverFeatures, 1) // VERSION_1
            write(Reg.status, Status.acknowledge | Status.driver | Status.featuresOK)
            for q in 0..<3 {
                let r = VsockDeviceTests.rings(q)
                write(Reg.queueSel, UInt32(q))
                write(Reg.queueNum, 8)
                write(Reg.queueDescLow, UInt32(r.desc))
                write(Reg.queueDriverLow, UInt32(r.avail))
                write(Reg.queueDeviceLow, UInt32(r.used))
                write(Reg.queueReady, 1)
            }
            write(Reg.status, Status.acknowledge | Status.driver | Status.featuresOK | Status.driverOK)
        }

        /// Posts one single-descriptor buffer at `address` on queue `q`.
        func post(_ q: Int, address: UInt64, length: UInt32, writable: Bool) throws {
            let r = VsockDeviceTests.rings(q)
            let d = UInt16(availIdx[q] % 8)
            let entry = r.desc + 16 * UInt64(d)
            try memory.store(address, at: entry)
            try memory.store(length, at: entry + 8)
            try memory.store(UInt16(writable ? 2 : 0), at: entry + 12)
            try memory.store(d, at: r.avail + 4 + 2 * UInt64(availIdx[q] % 8))
            availIdx[q] &+= 1
            try memory.store(availIdx[q], at: r.avail + 2)
        }

        func usedIdx(_ q: Int) throws -> UInt16 { try memory.load(UInt16.self, at: VsockDeviceTests.rings(q).used + 2) }
        func usedLength(_ q: Int, _ i: UInt16) throws -> UInt32 {
            try memory.load(UInt32.self, at: VsockDeviceTests.rings(q).used + 4 + 8 * UInt64(i % 8) + 4)
        }
    }

    func isReadable(_ fd: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0
    }

    @Test func identityQueuesAndConfig() throws {
        let rig = try Rig()
        #expect(rig.read(Reg.deviceID) == 19)
        for q in 0..<3 {
            rig.write(Reg.queueSel, UInt32(q))
            #expect(rig.read(Reg.queueNumMax) == 256)
        }
        rig.write(Reg.queueSel, 3)
        #expect(rig.read(Reg.queueNumMax) == 0)
        rig.write(Reg.deviceFeaturesSel, 0)
        #expect(rig.read(Reg.deviceFeatures) == 0)
        rig.write(Reg.deviceFeaturesSel, 1)
        #expect(rig.read(Reg.deviceFeatures) == 1)
        #expect(rig.read(Reg.config) == 42)
        #expect(rig.read(Reg.config + 4) == 0)
    }

    @Test func txServiceWakesThePollHandlerWhichServesRx() throws {
        let rig = try Rig()
        let listener = try UnixSocket.listen(at: rig.dir + "/v.sock_5000")
        rig.bringUp()
        try rig.post(0, address: 0x40000, length: 4096 + 44, writable: true)
        let request = VsockHeader(srcCID: 42, dstCID: 2, srcPort: 1025, dstPort: 5000, op: .request, bufAlloc: 65536)
        try rig.memory.write(request.bytes, at: 0x50000)
        try rig.post(1, address: 0x50000, length: 44, writable: false)
        rig.transport.serve(queue: 1)
        #expect(try rig.usedIdx(1) == 1)
        #expect(try rig.usedIdx(0) == 0, "tx service does not touch rx")
        #expect(isReadable(rig.muxer.pollFD), "the RESPONSE wakes the loop")
        _ = rig.transport.interrupt.drain()
        rig.muxer.handlePollEvents(rig.transport)
        #expect(try rig.usedIdx(0) == 1)
        #expect(try rig.usedLength(0, 0) == 44)
        let response = try #require(VsockHeader(try rig.memory.read(at: 0x40000, count: 44)))
        #expect(response.knownOp == .response)
        #expect(response.dstCID == 42 && response.dstPort == 1025 && response.srcPort == 5000)
        #expect(rig.read(Reg.interruptStatus) & 1 != 0)
        #expect(rig.transport.interrupt.drain())
        let accepted = swl_accept_nonblocking(listener.raw)
        #expect(accepted >= 0)
        defer { close(accepted) }
        #expect(rig.muxer.statistics.connections == 1)

        // The driver resets the device: the connection closes.
        rig.write(Reg.status, 0)
        #expect(rig.muxer.statistics.connections == 0)
        #expect(isReadable(rig.muxer.pollFD), "the reset wakes the loop, which closes the socket")
        rig.muxer.handlePollEvents(rig.transport)
        var byte: UInt8 = 0
        #expect(recv(accepted, &byte, 1, Int32(MSG_DONTWAIT)) == 0, "the host end sees EOF")
    }

    @Test func transportResetEventGoesToTheEventQueue() throws {
        let rig = try Rig()
        rig.bringUp()
        try rig.post(2, address: 0x60000, length: 4, writable: true)
        try rig.memory.store(UInt32(0xffff_ffff), at: 0x60000)
        rig.muxer.transportReset(rig.transport)
        rig.transport.serve(queue: 2)
        #expect(try rig.usedIdx(2) == 1)
        #expect(try rig.usedLength(2, 0) == 4)
        #expect(try rig.memory.load(UInt32.self, at: 0x60000) == 0)
    }

    @Test func machineConfigChecksTheVsockCID() throws {
        for cid: UInt32 in [0, 1, 2, .max] {
            var config = MachineConfig(kernelPath: "/nonexistent", cmdline: "")
            config.vsock = VsockConfig(guestCID: cid, udsPath: "/tmp/x.sock")
            #expect(throws: VMMError.self) { try config.validate(maxVcpus: 1) }
        }
        var config = MachineConfig(kernelPath: "/nonexistent", cmdline: "")
        config.vsock = VsockConfig(udsPath: "/tmp/x.sock")
        #expect(config.vsock?.guestCID == 3)
        try config.validate(maxVcpus: 1)
        config.drives = (0..<MachineConfig.maximumVirtioDevices).map { DriveConfig(path: "/d\($0)") }
        #expect(throws: VMMError.self) { try config.validate(maxVcpus: 1) }
    }
}
