import Glibc
@_spi(Testing) @testable import SwiftletX86

/// Builders for synthetic kernel images, so the tests need no binary fixtures.
enum Fixtures {
    /// A little-endian field writer on a growing byte array.
    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in bytes: inout [UInt8]) {
        let v = value.littleEndian
        for i in 0..<MemoryLayout<T>.size { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> (i * 8)) }
    }

    /// Deterministic, somewhat compressible bytes.
    static func data(count: Int, seed: UInt64 = 1) -> [UInt8] {
        var state = seed
        var out = [UInt8](repeating: 0, count: count)
        for i in 0..<count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            // Mostly a repeating pattern, some noise: compresses, but not trivially.
            out[i] = (i % 7 == 0) ? UInt8(truncatingIfNeeded: state >> 56) : UInt8(truncatingIfNeeded: i % 251)
        }
        return out
    }

    /// A bzImage around `payload` with the given header knobs.
    static func bzImage(
        payload: [UInt8],
        version: UInt16 = 0x020f,
        xloadflags: UInt16 = 0x3,
        setupSects: UInt8 = 4,
        payloadOffset: UInt32 = 0x200,
        payloadLength: UInt32? = nil,
        cmdlineSize: UInt32 = 2047,
        initrdAddrMax: UInt32 = 0x7fff_ffff,
        jumpByte: UInt8 = 0x6a
    ) -> [UInt8] {
        let sects = setupSects == 0 ? 4 : Int(setupSects)
        let pm = (sects + 1) * 512
        var b = [UInt8](repeating: 0, count: pm + Int(payloadOffset) + payload.count + 64)
        b[0x1f1] = setupSects
        put(UInt32((b.count - pm) / 16), at: 0x1f4, in: &b)
        put(UInt16(0xAA55), at: 0x1fe, in: &b)
        b[0x200] = 0xeb
        b[0x201] = jumpByte
        put(UInt32(0x5372_6448), at: 0x202, in: &b)
        put(version, at: 0x206, in: &b)
        b[0x211] = 0x01  // LOADED_HIGH
        put(UInt32(0x100000), at: 0x214, in: &b)
        put(initrdAddrMax, at: 0x22c, in: &b)
        put(UInt32(0x200000), at: 0x230, in: &b)
        b[0x234] = 1
        b[0x235] = 21
        put(xloadflags, at: 0x236, in: &b)
        put(cmdlineSize, at: 0x238, in: &b)
        put(payloadOffset, at: 0x248, in: &b)
        put(payloadLength ?? UInt32(payload.count), at: 0x24c, in: &b)
        put(UInt64(0x1000000), at: 0x258, in: &b)
        put(UInt32(0x2000000), at: 0x260, in: &b)
        b.replaceSubrange((pm + Int(payloadOffset))..<(pm + Int(payloadOffset) + payload.count), with: payload)
        return b
    }

    struct Seg {
        var paddr: UInt64
        var data: [UInt8]
        var memsz: UInt64
    }

    /// An ELF64 x86_64 executable with these PT_LOAD segments (plus one PT_NOTE).
    static func elf(entry: UInt64, segments: [Seg], type: UInt16 = 2, machine: UInt16 = 62) -> [UInt8] {
        let phnum = segments.count + 1
        var b = [UInt8](repeating: 0, count: 64 + phnum * 56)
        b.replaceSubrange(0..<4, with: [0x7f, 0x45, 0x4c, 0x46])
        b[4] = 2; b[5] = 1; b[6] = 1
        put(type, at: 16, in: &b)
        put(machine, at: 18, in: &b)
        put(UInt32(1), at: 20, in: &b)
        put(entry, at: 24, in: &b)
        put(UInt64(64), at: 32, in: &b)
        put(UInt16(64), at: 52, in: &b)
        put(UInt16(56), at: 54, in: &b)
        put(UInt16(phnum), at: 56, in: &b)
        // A PT_NOTE first, which the loader must skip.
        put(UInt32(4), at: 64, in: &b)
        for (i, s) in segments.enumerated() {
            let ph = 64 + (i + 1) * 56
            let offset = b.count
            b += s.data
            put(UInt32(1), at: ph, in: &b)
            put(UInt32(7), at: ph + 4, in: &b)
            put(UInt64(offset), at: ph + 8, in: &b)
            put(s.paddr | 0xffff_ffff_8000_0000, at: ph + 16, in: &b)  // vaddr, like vmlinux
            put(s.paddr, at: ph + 24, in: &b)
            put(UInt64(s.data.count), at: ph + 32, in: &b)
            put(s.memsz, at: ph + 40, in: &b)
            put(UInt64(0x200000), at: ph + 48, in: &b)
        }
        return b
    }

    /// A small valid vmlinux-like ELF at 16 MiB.
    static func smallKernel() -> [UInt8] {
        elf(entry: 0x100_0000, segments: [
            Seg(paddr: 0x100_0000, data: data(count: 5000), memsz: 8192),
            Seg(paddr: 0x100_4000, data: data(count: 100, seed: 7), memsz: 0x3000),
        ])
    }

    /// A fresh temporary directory.
    static func tempDirectory() -> String {
        var template = Array("/tmp/swiftlet-x86-test-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { buf -> String in
            guard let base = buf.baseAddress, let p = mkdtemp(base) else { fatalError("mkdtemp failed") }
            return String(cString: p)
        }
        return path
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        precondition(fd >= 0, "open \(path)")
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            precondition(n > 0)
            done += n
        }
        close(fd)
    }

    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func removeTree(_ path: String) {
        // rm -r: unlink what is a file, recurse into what is not.
        if let d = opendir(path) {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                if name == "." || name == ".." { continue }
                let child = path + "/" + name
                if unlink(child) != 0 { removeTree(child) }
            }
            closedir(d)
        }
        rmdir(path)
    }
}
