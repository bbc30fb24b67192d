// libFuzzer harness for the virtio-vsock device (VsockMuxer), driven as a
// hostile guest and hostile host clients would, over real Unix sockets.
//
// Input: a sequence of records, each [kind u8][arg u8][len u16 LE][len bytes]:
//   kind % 4 == 0  a tx packet: the bytes (header and payload), as one
//                  descriptor or two split at `arg`
//   kind % 4 == 1  host side, by arg % 4: 0 a client connects to the listener
//                  and sends the bytes; 1 every host end writes the bytes;
//                  2 the oldest host end closes; 3 it shuts down for writing
//   kind % 4 == 2  rx buffers, by arg % 3: header + 4 KiB (Linux 6.1), one
//                  4140-byte buffer, or one of `arg` bytes
//   kind % 4 == 3  arg % 2: device reset, or transport reset
// After each record the device runs as its event loop would, and every rx
// packet is checked: used length within the buffer, header addressed to the
// guest, `len` equal to the payload, buffering within `buf_alloc`.
// Guest CID 3; a host listener at `<uds>_1` accepts guest connections to port 1.
// Build and run with `FUZZ_TARGET=vsock Tests/Fuzz/run.sh`.
import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletVirtio

let guestCID: UInt32 = 3
let directory: String = {
    var template = Array("/tmp/swiftlet-vsock-fuzz-XXXXXX".utf8CString)
    precondition(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) } != nil, "mkdtemp")
    atexit { cleanUp() } // libFuzzer ends with exit()
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}()

/// Removes the sockets and their directory.
func cleanUp() {
    muxer.close()
    unlink(uds + "_1")
    rmdir(directory)
}
let uds = directory + "/v.sock"
let muxer = try! VsockMuxer(guestCID: guestCID, udsPath: uds)
let hostListener = try! UnixSocket.listen(at: uds + "_1", backlog: 64).release()
let memory = try! GuestMemory(size: 8 << 20)

// Queues: rx (16 entries) at 0x0/0x1000/0x2000, tx (32) at 0x3000/0x4000/0x5000, event (4) at 0x6000/0x7000/0x8000.
let rxConfig = VirtqueueConfig(size: 16, descTable: 0x0, availRing: 0x1000, usedRing: 0x2000)
let txConfig = VirtqueueConfig(size: 32, descTable: 0x3000, availRing: 0x4000, usedRing: 0x5000)
let eventConfig = VirtqueueConfig(size: 4, descTable: 0x6000, availRing: 0x7000, usedRing: 0x8000)
let rxSlots = 8, txSlots = 16
let rxData: UInt64 = 0x10000    // rx slot i: 0x10000 + i * 0x2000 (8 KiB each)
let txData: UInt64 = 0x100000   // tx slot i: 0x100000 + i * 0x10000 (64 KiB each)

/// Host sockets: clients of the listener and accepted guest connections.
nonisolated(unsafe) var hostEnds: [Int32] = [] // libFuzzer calls in on one thread

func setDescriptor(_ table: UInt64, _ index: Int, address: UInt64, length: Int, writable: Bool, next: Int?) {
    let d = table + 16 * UInt64(index)
    try! memory.store(address, at: d)
    try! memory.store(UInt32(length), at: d + 8)
    try! memory.store(UInt16((writable ? 2 : 0) | (next == nil ? 0 : 1)), at: d + 12)
    try! memory.store(UInt16(next ?? 0), at: d + 14)
}

func publish(_ config: VirtqueueConfig, _ head: Int, _ avail: inout UInt16) {
    try! memory.store(UInt16(head), at: config.availRing + 4 + 2 * UInt64(avail % config.size))
    avail &+= 1
    try! memory.store(avail, at: config.availRing + 2)
}

struct Driver {
    var rx: Virtqueue, tx: Virtqueue, event: Virtqueue
    var rxAvail: UInt16 = 0, txAvail: UInt16 = 0, rxSeen: UInt16 = 0
    var rxCapacity = [Int](repeating: 0, count: rxSlots)  // writable bytes of the chain in each slot; 0 when free
    var txNext = 0
    var broken = false

    init() {
        // Fresh rings: nothing of an earlier driver's indices survives.
        try! memory.fill(0, at: 0, count: 0xa000)
        rx = try! Virtqueue(memory: memory, config: rxConfig, maxSize: 256, eventIndex: false, indirect: false)
        tx = try! Virtqueue(memory: memory, config: txConfig, maxSize: 256, eventIndex: false, indirect: false)
        event = try! Virtqueue(memory: memory, config: eventConfig, maxSize: 256, eventIndex: false, indirect: false)
        var eventAvail: UInt16 = 0
        for i in 0..<4 {
            setDescriptor(eventConfig.descTable, i, address: 0x9000 + 16 * UInt64(i), length: 4, writable: true, next: nil)
            publish(eventConfig, i, &eventAvail)
        }
    }

    /// Posts rx chains into the free slots; slot i uses descriptors 2i and 2i+1.
    mutating func postRx(_ arg: UInt8) {
        for i in 0..<rxSlots where rxCapacity[i] == 0 {
            let base = rxData + UInt64(i) * 0x2000
            switch arg % 3 {
            case 0:
                setDescriptor(rxConfig.descTable, 2 * i, address: base, length: 44, writable: true, next: 2 * i + 1)
                setDescriptor(rxConfig.descTable, 2 * i + 1, address: base + 64, length: 4096, writable: true, next: nil)
                rxCapacity[i] = 44 + 4096
            case 1:
                setDescriptor(rxConfig.descTable, 2 * i, address: base, length: 4140, writable: true, next: nil)
                rxCapacity[i] = 4140
            default:
                setDescriptor(rxConfig.descTable, 2 * i, address: base, length: Int(arg), writable: true, next: nil)
                rxCapacity[i] = max(Int(arg), 1) // 0-byte chains still count as posted
            }
            publish(rxConfig, 2 * i, &rxAvail)
        }
    }

    /// Posts one tx packet, as one descriptor or two.
    mutating func postTx(_ bytes: UnsafeRawBufferPointer, split: Int) {
        let slot = txNext % txSlots
        txNext += 1
        let address = txData + UInt64(slot) * 0x10000
        try! memory.write(bytes, at: address)
        if split > 0 && split < bytes.count {
            setDescriptor(txConfig.descTable, 2 * slot, address: address, length: split, writable: false, next: 2 * slot + 1)
            setDescriptor(txConfig.descTable, 2 * slot + 1, address: address + UInt64(split), length: bytes.count - split,
                          writable: false, next: nil)
        } else {
            setDescriptor(txConfig.descTable, 2 * slot, address: address, length: bytes.count, writable: false, next: nil)
        }
        publish(txConfig, 2 * slot, &txAvail)
    }

    /// Runs the device once and checks every rx packet it produced.
    mutating func run() {
        muxer.process()
        do {
            _ = try muxer.serveTx(tx)
            _ = try muxer.serveRx(rx)
            _ = try muxer.serveEvent(event)
        } catch {
            broken = true // the fuzzer's own ring bookkeeping ran over; the input ends here
            return
        }
        let usedIdx = try! memory.load(UInt16.self, at: rxConfig.usedRing + 2)
        while rxSeen != usedIdx {
            let e = rxConfig.usedRing + 4 + 8 * UInt64(rxSeen % rxConfig.size)
            let head = Int(try! memory.load(UInt32.self, at: e))
            let length = Int(try! memory.load(UInt32.self, at: e + 4))
            rxSeen &+= 1
            precondition(head % 2 == 0 && head / 2 < rxSlots, "used head \(head) was never posted")
            let slot = head / 2
            precondition(rxCapacity[slot] > 0, "slot \(slot) used twice")
            precondition(length <= rxCapacity[slot], "used length \(length) past the buffer")
            if length > 0 {
                precondition(length >= VirtioVsock.headerSize, "a packet shorter than its header")
                let base = rxData + UInt64(slot) * 0x2000
                let header = VsockHeader(try! memory.read(at: base, count: VirtioVsock.headerSize))!
                precondition(header.dstCID == UInt64(guestCID), "packet not addressed to the guest")
                precondition(header.srcCID == VirtioVsock.hostCID || header.knownOp == .rst, "packet not from the host")
                precondition(Int(header.len) == length - VirtioVsock.headerSize, "len does not match the payload")
                precondition(header.len <= UInt32(VirtioVsock.maxPayload), "payload over 64 KiB")
                precondition(header.type == VsockType.stream, "not a stream packet")
            }
            rxCapacity[slot] = 0
        }
        let stats = muxer.statistics
        precondition(stats.maxBufferedGuestBytes <= Int(VirtioVsock.bufferSize), "buffered past buf_alloc")
        precondition(stats.connections <= VirtioVsock.maxConnections, "too many connections")
        // Accept guest connections to port 1; keep a few host ends.
        while let end = try? UnixSocket.accept(hostListener) {
            if hostEnds.count < 16 { hostEnds.append(end.release()) }
        }
    }
}

func hostAction(_ arg: UInt8, _ bytes: UnsafeRawBufferPointer) {
    switch arg % 4 {
    case 0:
        guard hostEnds.count < 16, let client = try? UnixSocket.connect(to: uds) else { return }
        let fd = client.release()
        _ = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        hostEnds.append(fd)
    case 1:
        for fd in hostEnds { _ = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
    case 2:
        if !hostEnds.isEmpty { close(hostEnds.removeFirst()) }
    default:
        if let fd = hostEnds.first { _ = shutdown(fd, Int32(SHUT_WR)) }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    // A clean device and clean guest memory per input.
    muxer.reset()
    muxer.process() // the loop's turn: the reset's sockets close there
    for fd in hostEnds { close(fd) }
    hostEnds = []
    while let end = try? UnixSocket.accept(hostListener) { _ = end }
    for region in memory.regions {
        UnsafeMutableRawBufferPointer(start: region.host, count: 0x200000).initializeMemory(as: UInt8.self, repeating: 0)
    }
    var driver = Driver()
    driver.postRx(0)

    let input = UnsafeRawBufferPointer(start: data, count: count)
    var at = 0
    var records = 0
    while at + 4 <= count && records < 256 && !driver.broken {
        let kind = input[at], arg = input[at + 1]
        let length = min(Int(input[at + 2]) | Int(input[at + 3]) << 8, count - at - 4)
        let bytes = UnsafeRawBufferPointer(rebasing: input[(at + 4)..<(at + 4 + length)])
        at += 4 + length
        records += 1
        switch kind % 4 {
        case 0: driver.postTx(bytes, split: Int(arg))
        case 1: hostAction(arg, bytes)
        case 2: driver.postRx(arg)
        default:
            if arg % 2 == 0 {
                muxer.reset()
                driver = Driver() // the driver sets its queues up again
                driver.postRx(0)
                continue
            }
            muxer.transportReset()
        }
        driver.run()
        driver.run() // a second pass: what the first queued (wakes, re-armed sockets)
    }
    return 0
}
