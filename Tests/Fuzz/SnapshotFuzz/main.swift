// libFuzzer harness for the snapshot state decoder: `Snapshot.decodeManifest`
// and `decodeState` over `StateReader`, and `Snapshot.load` on a directory.
//
// Input: byte 0 chooses how the rest is used (by byte 0 % 8):
//   0-3  the payload (manifest, then machine state), decoded from memory
//   4-5  the payload, in a state file with a valid header (magic, format,
//        length, SHA-256) that `Snapshot.load` reads from a directory
//   6    the whole state file, as is, for `Snapshot.load`
//   7    `Snapshot.load` of a directory whose state is a directory (byte 1
//        even) or a sparse file past the size limit (odd)
// The memory file is sized as the manifest says when it decodes (so that load
// can succeed), else left empty.
//
// Any input must give a SnapshotError or a value, never a trap or an access
// outside memory. When decoding succeeds, `Snapshot.encode` of the result must
// give back the bytes decoded (the one field encode leaves out: the vsock CID
// of a machine without vsock, always 0), and decoding that again gives the
// same value (encoded, the same bytes); `load` must take the whole payload.
//
// Seeds: `FUZZ_TARGET=snapshot Tests/Fuzz/run.sh -write_seeds=DIR [-from_state=FILE ...]`
// writes encoder output (synthetic machines, and each FILE's state with its
// paths and inode numbers replaced) and malformed variants of it into DIR.
// Build and run with `FUZZ_TARGET=snapshot Tests/Fuzz/run.sh`.
import CSwiftlet
import Glibc
import SwiftletDevices
import SwiftletKVM
import SwiftletPersist
import SwiftletSys
import SwiftletVirtio
@testable import SwiftletVMM
import SwiftletX86

let directory: String = {
    let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
    var template = Array("\(base)/swiftlet-snapshot-fuzz-XXXXXX".utf8CString)
    precondition(template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) } != nil, "mkdtemp")
    atexit { cleanUp() } // libFuzzer ends with exit()
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}()
let statePath = directory + "/" + Snapshot.stateFileName
let memoryPath = directory + "/" + Snapshot.memoryFileName

func cleanUp() {
    rmdir(statePath)
    unlink(statePath)
    unlink(memoryPath)
    rmdir(directory)
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    precondition(fd >= 0, "create \(path)")
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    precondition(n == bytes.count, "write \(path)")
    close(fd)
}

/// The state file `SnapshotWriter` writes for `payload`.
func stateFile(_ payload: [UInt8], format: UInt32 = Snapshot.formatVersion) -> [UInt8] {
    var w = StateWriter()
    w.u32(format)
    w.u32(0)
    w.u64(UInt64(payload.count))
    return Snapshot.magic + w.bytes + SHA256.hash(payload) + payload
}

/// Decodes a payload as `load` does after its header, without the version check.
func decode(_ bytes: [UInt8]) -> (manifest: SnapshotManifest, state: MachineState, manifestEnd: Int, end: Int)? {
    var r = StateReader(bytes)
    guard let m = try? Snapshot.decodeManifest(&r) else { return nil }
    let manifestEnd = r.offset
    guard let s = try? Snapshot.decodeState(&r, manifest: m) else { return nil }
    return (m, s, manifestEnd, r.offset)
}

/// The promises of a successful decode of `bytes[0..<end]`.
func checkRoundTrip(_ bytes: [UInt8], _ m: SnapshotManifest, _ s: MachineState, manifestEnd: Int, end: Int) {
    let encoded = Snapshot.encode(m, s)
    var consumed = Array(bytes[0..<end])
    if m.vsockCID == nil {
        // hasVsock (0), then the CID, then the range count and 16 bytes per range end the manifest.
        let cid = manifestEnd - 16 * m.memoryRanges.count - 8
        precondition(consumed[cid - 1] == 0, "the vsock flag is not where the manifest's layout puts it")
        consumed.replaceSubrange(cid..<(cid + 4), with: [0, 0, 0, 0])
    }
    precondition(encoded == consumed, "encode(decode(bytes)) is not the bytes decoded")
    guard let again = decode(encoded) else { preconditionFailure("the encoder's output does not decode") }
    precondition(again.end == encoded.count, "the encoder's output decodes short")
    precondition(Snapshot.encode(again.manifest, again.state) == encoded, "decode(encode(x)) is not x")
    // What a restore derives from the manifest before it opens any file.
    let config = Snapshot(directory: directory, manifest: m, state: s).machineConfig(vsockPath: nil)
    precondition(config.drives.count == m.drives.count && config.memoryMiB == m.memoryMiB, "machineConfig")
}

/// Loads the directory; checks a snapshot it returns against the payload in the file.
func load(payload: [UInt8]?) {
    guard let snapshot = try? Snapshot.load(directory: directory) else { return }
    guard let payload else { preconditionFailure("load accepted a state file that is not one") }
    let encoded = Snapshot.encode(snapshot.manifest, snapshot.state)
    guard let decoded = decode(payload) else { preconditionFailure("load accepted a payload that does not decode") }
    precondition(decoded.end == payload.count, "load accepted trailing bytes")
    precondition(snapshot.manifest.swiftletVersion == SwiftletVersion.string, "load accepted another version")
    precondition(encoded == Snapshot.encode(decoded.manifest, decoded.state), "load decoded something else")
    checkRoundTrip(payload, decoded.manifest, decoded.state, manifestEnd: decoded.manifestEnd, end: decoded.end)
}

/// The memory file as the manifest in `payload` sizes it (sparse), when it decodes to a sane size.
func sizeMemoryFile(for payload: [UInt8]) {
    var r = StateReader(payload)
    var size = 0
    if let m = try? Snapshot.decodeManifest(&r), m.memoryFileSize <= 1 << 40 { size = m.memoryFileSize }
    let fd = open(memoryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    precondition(fd >= 0 && ftruncate(fd, off_t(size)) == 0, "memory file")
    close(fd)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count >= 1 else { return 0 }
    let rest = Array(UnsafeBufferPointer(start: data + 1, count: count - 1))
    switch data[0] % 8 {
    case 0...3:
        if let d = decode(rest) { checkRoundTrip(rest, d.manifest, d.state, manifestEnd: d.manifestEnd, end: d.end) }
    case 4, 5:
        writeFile(statePath, stateFile(rest))
        sizeMemoryFile(for: rest)
        load(payload: rest)
    case 6:
        writeFile(statePath, rest)
        let header = Snapshot.headerSize
        let payload = rest.count >= header ? Array(rest[header...]) : []
        sizeMemoryFile(for: payload)
        // Whatever load accepts must have a valid header (its reserved u32 is
        // not read): the payload is then the rest.
        var zeroed = rest
        if zeroed.count >= 16 { zeroed.replaceSubrange(12..<16, with: [0, 0, 0, 0]) }
        let valid = rest.count >= header && stateFile(payload) == zeroed
        load(payload: valid ? payload : nil)
    default:
        rmdir(statePath)
        unlink(statePath)
        if rest.first.map({ $0 % 2 == 0 }) ?? true {
            precondition(mkdir(statePath, 0o755) == 0, "mkdir")
            load(payload: nil)
            rmdir(statePath)
        } else {
            let fd = open(statePath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            precondition(fd >= 0 && ftruncate(fd, off_t(Snapshot.maxStateSize + 1)) == 0, "state file")
            close(fd)
            load(payload: nil)
        }
    }
    return 0
}

// MARK: - Seeds

/// A C struct with every byte set from `seed` (KVM state is opaque to the codec).
func filled<T>(_ value: T, _ seed: UInt8) -> T {
    var v = value
    withUnsafeMutableBytes(of: &v) { b in for i in b.indices { b[i] = seed &+ UInt8(truncatingIfNeeded: i &* 7) } }
    return v
}

func identity(_ seed: UInt8) -> FileIdentity {
    FileIdentity(sha256: (0..<32).map { seed &+ $0 }, size: 4 << 20, device: 0x803, inode: 1000 + UInt64(seed), ctimeNanos: 1_700_000_000_000_000_000)
}

/// A machine with `vcpus` vCPUs, `drives` drives and optional vsock, as `writeSnapshot` would record it.
func drive(_ i: Int) -> SnapshotManifest.Drive {
    let config = DriveConfig(path: "/images/disk\(i).ext4", readOnly: i == 0, ephemeral: i == 1, id: i == 2 ? "serial-\(i)" : nil)
    let capacity = UInt64(64 + i) << 20
    return SnapshotManifest.Drive(config: config, capacityBytes: capacity, identity: i < 2 ? identity(UInt8(10 + i)) : nil)
}

/// A virtio-mmio transport's state with `queues` ready queues.
func transport(_ t: Int, queues: Int) -> VirtioMMIOTransport.SavedState {
    var saved: [VirtioMMIOTransport.SavedState.Queue] = []
    for q in 0..<queues {
        let desc = 0x100000 * UInt64(t + 1) + 0x1000 * UInt64(q)
        let driver = desc + 0x10_0000, device = desc + 0x20_0000
        saved.append(.init(size: 256, desc: desc, driver: driver, device: device, ready: true,
                           nextAvail: UInt16(q * 100), nextUsed: UInt16(q * 99)))
    }
    let features: UInt64 = 1 << 32 | 1 << 29
    return VirtioMMIOTransport.SavedState(status: 15, deviceFeaturesSel: 1, driverFeaturesSel: 1, driverFeatures: features,
                                          queueSel: 0, interruptStatus: 0, queues: saved)
}

func machine(vcpus: Int, drives: Int, vsock: Bool, memoryMiB: Int, cpuid: Int, msrs: Int) -> (SnapshotManifest, MachineState) {
    let ranges = Layout.ramRanges(memoryBytes: memoryMiB << 20)
    let manifest = SnapshotManifest(
        swiftletVersion: SwiftletVersion.string, createdNanos: 1_764_000_000_000_000_000, guestClockNanos: 812_000_000,
        memoryMiB: memoryMiB, vcpuCount: vcpus, cpuTemplate: vcpus > 1 ? .host : .pvmSafe,
        cmdline: "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw quiet SWIFTLET_AGENT=52",
        kernelPath: "/images/vmlinux", kernel: identity(1),
        drives: (0..<drives).map(drive),
        vsockCID: vsock ? 3 : nil, memoryRanges: ranges)
    var saved: [SavedVcpu] = []
    for v in 0..<vcpus {
        var s = VcpuState()
        s.regs = filled(s.regs, UInt8(v))
        s.sregs = filled(s.sregs, 0x20)
        s.xsave = filled(s.xsave, 0x30)
        s.xcrs = filled(s.xcrs, 0x40)
        s.debugRegs = filled(s.debugRegs, 0x50)
        s.lapic = filled(s.lapic, 0x60)
        s.msrs = (0..<msrs).map { (index: 0xc000_0080 + UInt32($0), value: UInt64($0) << 32 | 0x501) }
        s.events = filled(s.events, 0x70)
        s.mpState = filled(s.mpState, 0)
        s.tscKHz = 2_400_000
        saved.append(SavedVcpu(cpuid: (0..<cpuid).map { filled(kvm_cpuid_entry2(), UInt8($0)) }, state: s))
    }
    var vm = VMState()
    vm.picMaster = filled(vm.picMaster, 1)
    vm.picSlave = filled(vm.picSlave, 2)
    vm.ioapic = filled(vm.ioapic, 3)
    vm.pit = filled(vm.pit, 4)
    vm.clock = filled(vm.clock, 5)
    let serial = Serial8250.SavedState(ier: 1, lcr: 3, mcr: 8, scratch: 0, dll: 1, dlm: 0, fifoEnabled: true, thrInterruptPending: false)
    // The vsock transport (last) has three queues, a block transport one.
    let transports = (0..<(drives + (vsock ? 1 : 0))).map { transport($0, queues: $0 == drives ? 3 : 1) }
    return (manifest, MachineState(vcpus: saved, vm: vm, serial: serial, transports: transports))
}

/// A real snapshot's state file, its host details replaced: paths, device and inode numbers, times.
func anonymized(_ path: String) -> [UInt8] {
    let file: [UInt8]
    do { file = try Snapshot.readStateFile(path) } catch { fatalError("\(path): \(error)") }
    guard file.count > Snapshot.headerSize, let d = decode(Array(file[Snapshot.headerSize...])) else { fatalError("\(path) does not decode") }
    var m = d.manifest
    m.kernelPath = "/images/vmlinux"
    m.createdNanos = 1_764_000_000_000_000_000
    func scrub(_ id: FileIdentity) -> FileIdentity {
        FileIdentity(sha256: id.sha256, size: id.size, device: 0x803, inode: 1000, ctimeNanos: 1_700_000_000_000_000_000)
    }
    m.kernel = scrub(m.kernel)
    for i in m.drives.indices {
        m.drives[i].config.path = "/images/disk\(i).ext4"
        m.drives[i].identity = m.drives[i].identity.map(scrub)
    }
    return Snapshot.encode(m, d.state)
}

/// Writes the seed corpus: payloads (modes 0, 4), whole files (6), malformed variants.
func writeSeeds(into dir: String, realStates: [String]) {
    mkdir(dir, 0o755)
    var seeds: [(String, [UInt8])] = []
    func add(_ name: String, _ payload: [UInt8], load: Bool = true, file: Bool = false) {
        seeds.append(("payload-" + name, [0] + payload))
        if load { seeds.append(("load-" + name, [4] + payload)) }
        if file { seeds.append(("file-" + name, [6] + stateFile(payload))) }
    }
    let machines: [(String, (SnapshotManifest, MachineState))] = [
        ("1cpu-1drive-vsock", machine(vcpus: 1, drives: 1, vsock: true, memoryMiB: 128, cpuid: 3, msrs: 4)),
        ("2cpu-3drives", machine(vcpus: 2, drives: 3, vsock: false, memoryMiB: 256, cpuid: 2, msrs: 2)),
        ("1cpu-no-devices-high-memory", machine(vcpus: 1, drives: 0, vsock: false, memoryMiB: 4096, cpuid: 0, msrs: 0)),
    ]
    var payloads = machines.map { ($0.0, Snapshot.encode($0.1.0, $0.1.1)) }
    for (i, path) in realStates.enumerated() { payloads.append(("real-\(i)", anonymized(path))) }
    for (i, (name, p)) in payloads.enumerated() { add(name, p, file: i == 0 || name.hasPrefix("real")) }

    // Malformed variants of the first payload (each one decoder error), and whole-file ones.
    let (m, s) = machines[0].1
    let good = payloads[0].1
    var r = StateReader(good)
    _ = try! Snapshot.decodeManifest(&r)
    let manifestEnd = r.offset
    add("truncated-manifest", Array(good[0..<(manifestEnd / 2)]), load: false)
    add("truncated-state", Array(good[0..<(good.count - 100)]))
    add("trailing-byte", good + [0])
    var version = good
    version[6] = UInt8(ascii: "9") // "0.8.0" -> "0.9.0"
    add("other-version", version)
    var badBool = good
    badBool[manifestEnd - 16 * m.memoryRanges.count - 9] = 2 // the vsock flag
    add("bad-bool", badBool, load: false)
    var hugeCount = good
    hugeCount.replaceSubrange(manifestEnd..<(manifestEnd + 4), with: [0xff, 0xff, 0, 0]) // vCPU count
    add("huge-count", hugeCount, load: false)
    var badUTF8 = good
    badUTF8[4] = 0xff
    add("bad-utf8", badUTF8, load: false)
    var noVsockCID = Snapshot.encode({ var m2 = m; m2.vsockCID = nil; return m2 }(), { var s2 = s; s2.transports.removeLast(); return s2 }())
    add("no-vsock", noVsockCID, load: false)
    noVsockCID[manifestEnd - 16 * m.memoryRanges.count - 8] = 7 // a CID although there is no vsock device
    add("no-vsock-stray-cid", noVsockCID, load: false)
    var file = stateFile(good)
    file[Snapshot.headerSize + 10] ^= 1
    seeds.append(("file-bad-checksum", [6] + file))
    seeds.append(("file-format-2", [6] + stateFile(good, format: 2)))
    seeds.append(("file-truncated", [6] + Array(stateFile(good).dropLast(7))))
    seeds.append(("file-bad-magic", [6] + Array("SWLTSNAQ".utf8) + stateFile(good).dropFirst(8)))
    seeds.append(("load-state-is-a-directory", [7, 0]))
    seeds.append(("load-state-too-large", [7, 1]))
    for (name, bytes) in seeds { writeFile(dir + "/" + name, bytes) }
    print("wrote \(seeds.count) seeds to \(dir)")
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>) -> Int32 {
    let args = (0..<Int(argc.pointee)).compactMap { argv.pointee[$0].map { String(cString: $0) } }
    guard let seedDir = args.first(where: { $0.hasPrefix("-write_seeds=") })?.dropFirst("-write_seeds=".count) else { return 0 }
    let real = args.filter { $0.hasPrefix("-from_state=") }.map { String($0.dropFirst("-from_state=".count)) }
    writeSeeds(into: String(seedDir), realStates: real)
    exit(0)
}
