import Synchronization
import Testing
@testable import SwiftletDevices

/// Records what a device sends out: bytes and interrupt pulses.
final class Probe: Sendable {
    let bytes = Mutex<[UInt8]>([])
    let interrupts = Atomic<Int>(0)
    var output: [UInt8] { bytes.withLock { $0 } }
    var irqs: Int { interrupts.load(ordering: .relaxed) }
}

extension BusDevice {
    func readByte(_ offset: UInt64) -> UInt8 {
        var b: UInt8 = 0
        withUnsafeMutableBytes(of: &b) { read(offset: offset, data: $0) }
        return b
    }
    func writeByte(_ offset: UInt64, _ value: UInt8) {
        var b = value
        withUnsafeBytes(of: &b) { write(offset: offset, data: $0) }
    }
}

struct Serial8250Tests {
    func make() -> (Serial8250, Probe) {
        let p = Probe()
        let s = Serial8250(output: { b in p.bytes.withLock { $0.append(b) } },
                           raiseInterrupt: { p.interrupts.add(1, ordering: .relaxed) })
        return (s, p)
    }

    @Test func transmitsBytesAndReportsAnEmptyTransmitter() {
        let (s, p) = make()
        for b in "ok\n".utf8 { s.writeByte(0, b) }
        #expect(p.output == Array("ok\n".utf8))
        #expect(s.readByte(5) & 0x60 == 0x60) // THRE and TEMT
        #expect(p.irqs == 0) // no interrupt enabled
    }

    @Test func transmitterEmptyInterruptFiresAndIsAcknowledgedByReadingIIR() {
        let (s, p) = make()
        s.writeByte(1, 0x02) // IER: THR empty
        #expect(p.irqs == 1)
        #expect(s.readByte(2) & 0x0f == 0x02)
        #expect(s.readByte(2) & 0x0f == 0x01) // acknowledged
        s.writeByte(0, 0x41)
        #expect(p.irqs == 2)
    }

    @Test func receivesInputWithInterruptAndDataReady() {
        let (s, p) = make()
        s.writeByte(1, 0x01) // IER: data available
        #expect(s.enqueueInput(Array("hi".utf8)) == 2)
        #expect(p.irqs == 1)
        #expect(s.readByte(5) & 0x01 == 1)
        #expect(s.readByte(2) & 0x0f == 0x04)
        #expect(s.readByte(0) == UInt8(ascii: "h"))
        #expect(s.readByte(0) == UInt8(ascii: "i"))
        #expect(s.readByte(5) & 0x01 == 0)
        #expect(s.readByte(0) == 0) // empty FIFO reads 0
    }

    @Test func inputIsBoundedByTheFIFO() {
        let (s, _) = make()
        let taken = s.enqueueInput([UInt8](repeating: 1, count: 1000))
        #expect(taken == Serial8250.inputCapacity)
        #expect(s.inputSpace == 0)
        #expect(s.enqueueInput([2]) == 0)
    }

    @Test func divisorLatchAndScratchAndLoopback() {
        let (s, p) = make()
        s.writeByte(3, 0x80) // DLAB
        s.writeByte(0, 0x01)
        s.writeByte(1, 0x00)
        #expect(s.readByte(0) == 0x01)
        s.writeByte(3, 0x03)
        s.writeByte(7, 0x5a)
        #expect(s.readByte(7) == 0x5a)
        s.writeByte(4, 0x10 | 0x0f) // loopback, all modem outputs on
        s.writeByte(0, 0x99)
        #expect(p.output.isEmpty) // loopback never reaches the host
        #expect(s.readByte(0) == 0x99)
        #expect(s.readByte(6) & 0xf0 == 0xf0)
    }

    @Test func oddAccessesAreHarmless() {
        let (s, _) = make()
        s.write(offset: 9, data: UnsafeRawBufferPointer(start: nil, count: 0))
        var wide: UInt32 = 0xffff_ffff
        withUnsafeMutableBytes(of: &wide) { s.read(offset: 5, data: $0) }
        #expect(wide & 0xffff_ff00 == 0) // only the low byte is the register
    }
}

struct I8042Tests {
    @Test func resetCommandCallsBack() {
        let resets = Atomic<Int>(0)
        let k = I8042 { resets.add(1, ordering: .relaxed) }
        k.writeByte(4, 0xaa) // self-test
        #expect(k.readByte(4) & 0x01 == 1)
        #expect(k.readByte(0) == 0x55)
        #expect(resets.load(ordering: .relaxed) == 0)
        k.writeByte(4, 0xfe)
        #expect(resets.load(ordering: .relaxed) == 1)
    }

    @Test func controlByteRoundTrip() {
        let k = I8042 {}
        k.writeByte(4, 0x60)
        k.writeByte(0, 0x47)
        k.writeByte(4, 0x20)
        #expect(k.readByte(0) == 0x47)
    }
}

struct BootTimerTests {
    @Test func onlyTheMagicByteAtOffsetZeroCounts() {
        let calls = Atomic<Int>(0)
        let t = BootTimer { _, _ in calls.add(1, ordering: .relaxed) }
        t.writeByte(0, 122)
        t.writeByte(1, 123)
        var word: UInt32 = 123
        withUnsafeBytes(of: &word) { t.write(offset: 0, data: $0) }
        #expect(calls.load(ordering: .relaxed) == 0)
        t.writeByte(0, 123)
        #expect(calls.load(ordering: .relaxed) == 1)
    }
}

struct BusTests {
    @Test func dispatchesByRangeAndRejectsOverlaps() throws {
        var bus = Bus()
        let a = I8042 {}, b = I8042 {}
        try bus.insert(a, base: 0x60, size: 5)
        try bus.insert(b, base: 0x100, size: 0x10)
        #expect(throws: BusError.overlap(base: 0x64, size: 4)) { try bus.insert(a, base: 0x64, size: 4) }
        #expect(throws: BusError.emptyRange) { try bus.insert(a, base: 0x200, size: 0) }
        #expect(throws: BusError.emptyRange) { try bus.insert(a, base: UInt64.max, size: 2) }
        #expect(bus.resolve(0x64)?.offset == 4)
        #expect(bus.resolve(0x65) == nil)
        #expect(bus.resolve(0x10f)?.offset == 0xf)
        #expect(bus.resolve(0) == nil)
    }

    @Test func unclaimedReadsAreAllOnes() {
        let bus = Bus()
        var v: UInt16 = 0
        let claimed = withUnsafeMutableBytes(of: &v) { bus.read(0x80, $0) }
        #expect(!claimed)
        #expect(v == 0xffff)
    }
}
