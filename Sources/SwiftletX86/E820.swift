/// One entry of the BIOS E820 memory map handed to the kernel in the zero page.
public struct E820Entry: Sendable, Equatable {
    /// Usable RAM.
    public static let ram: UInt32 = 1
    /// Reserved: the kernel must not use it.
    public static let reserved: UInt32 = 2

    /// Start address.
    public var addr: UInt64
    /// Length in bytes.
    public var size: UInt64
    /// `E820Entry.ram` or `E820Entry.reserved`.
    public var type: UInt32

    public init(addr: UInt64, size: UInt64, type: UInt32) {
        self.addr = addr
        self.size = size
        self.type = type
    }

    /// One past the last address.
    public var end: UInt64 { addr + size }
}

/// The guest's E820 memory map.
public enum E820 {
    /// The zero page has room for 128 entries.
    public static let maxEntries = 128

    /// The map for these RAM ranges: RAM below the EBDA, the legacy area
    /// [0x9fc00, 1 MiB) reserved (EBDA with the MP table, VGA hole, BIOS ROM),
    /// then the rest of each range as RAM.
    ///
    /// The result is sorted and holds at most `maxEntries` entries.
    public static func layout(ram: [(base: UInt64, size: Int)]) -> [E820Entry] {
        var entries: [E820Entry] = []
        var reservedAdded = false
        for r in ram.sorted(by: { $0.base < $1.base }) where r.size > 0 {
            let start = r.base
            let end = r.base + UInt64(r.size)
            // The part below the EBDA is ordinary RAM.
            if start < Layout.systemReservedStart {
                entries.append(E820Entry(addr: start, size: min(end, Layout.systemReservedStart) - start, type: E820Entry.ram))
            }
            // The legacy area is reported reserved once, whether RAM backs it or not.
            if !reservedAdded, start < Layout.systemReservedEnd, end > Layout.systemReservedStart {
                entries.append(E820Entry(
                    addr: Layout.systemReservedStart,
                    size: Layout.systemReservedEnd - Layout.systemReservedStart,
                    type: E820Entry.reserved))
                reservedAdded = true
            }
            // Everything from 1 MiB up is RAM.
            let high = max(start, Layout.systemReservedEnd)
            if end > high {
                entries.append(E820Entry(addr: high, size: end - high, type: E820Entry.ram))
            }
        }
        return Array(entries.prefix(maxEntries))
    }
}
