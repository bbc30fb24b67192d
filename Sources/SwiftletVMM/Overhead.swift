import Glibc
import SwiftletSys

extension Machine {
    /// The VMM's resident memory outside guest memory, in bytes: all of it
    /// (`rss`, including shared code pages of the binary and libraries) and
    /// the anonymous part alone (`anonymous`: heap, stacks, data).
    ///
    /// Guest memory is several mappings (anonymous RAM, and the kernel and
    /// initrd files mapped over it), so its resident size is summed from the
    /// `Rss:` of every /proc/self/smaps entry inside a guest region. (mincore
    /// would count file pages that are only in the page cache.)
    ///
    /// `smapsFD`: /proc/self/smaps opened before the guest ran (the main
    /// thread's seccomp filter allows no open); -1 opens it here.
    public func hostOverhead(smapsFD: Int32 = -1) -> (rss: Int, anonymous: Int) {
        let ranges = memory.regions.map { (UInt(bitPattern: $0.host), UInt(bitPattern: $0.host) + UInt($0.size)) }
        var guestKiB = 0, totalKiB = 0, anonKiB = 0
        var inGuest = false
        let smaps = smapsFD >= 0 ? Self.reread(smapsFD) : ((try? readToEnd("/proc/self/smaps")) ?? [])
        for line in smaps.split(separator: UInt8(ascii: "\n")) {
            if let dash = line.firstIndex(of: UInt8(ascii: "-")), line.first.map({ Self.isHexDigit($0) }) == true,
               let space = line.firstIndex(of: UInt8(ascii: " ")), dash < space,
               let start = UInt(String(decoding: line[..<dash], as: UTF8.self), radix: 16),
               let end = UInt(String(decoding: line[line.index(after: dash)..<space], as: UTF8.self), radix: 16) {
                inGuest = ranges.contains { start >= $0.0 && end <= $0.1 }
            } else if line.starts(with: Array("Rss:".utf8)) {
                let kib = Self.kibValue(line)
                totalKiB += kib
                if inGuest { guestKiB += kib }
            } else if line.starts(with: Array("Anonymous:".utf8)), !inGuest {
                anonKiB += Self.kibValue(line)
            }
        }
        return (max(0, totalKiB - guestKiB) * 1024, anonKiB * 1024)
    }

    /// The whole file behind `fd`, from its start.
    private static func reread(_ fd: Int32) -> [UInt8] {
        guard lseek(fd, 0, SEEK_SET) == 0 else { return [] }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { read(fd, b.baseAddress, b.count) } }
            if n <= 0 { return out }
            out += chunk[0..<n]
        }
    }

    private static func kibValue(_ line: ArraySlice<UInt8>) -> Int {
        let digits = line.filter { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        return Int(String(decoding: digits, as: UTF8.self)) ?? 0
    }

    private static func isHexDigit(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
    }
}
