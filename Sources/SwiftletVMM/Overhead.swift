import Glibc

extension Machine {
    /// The VMM's own resident memory: the process RSS minus the resident
    /// pages of guest memory (counted with `mincore`).
    public func hostOverheadBytes() -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var guestResident = 0
        for r in memory.regions {
            let pages = (r.size + page - 1) / page
            var vec = [UInt8](repeating: 0, count: pages)
            if mincore(r.host, r.size, &vec) == 0 {
                guestResident += vec.reduce(0) { $0 + Int($1 & 1) }
            }
        }
        return max(0, Self.residentBytes() - guestResident * page)
    }

    /// The process's resident set, from /proc/self/statm.
    static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 128)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        let fields = buf[0..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
