import SwiftletMemory

/// Translates a guest linear address to a guest physical one by walking the
/// guest's own page tables in guest memory.
///
/// Used to fetch the bytes of an instruction KVM could not emulate. Works in
/// every paging mode Linux uses on the way to long mode. Every table read is
/// bounds-checked by `GuestMemory`; a bad table gives nil, never a host access.
public struct PageWalk {
    static let present: UInt64 = 1
    static let pageSizeBit: UInt64 = 1 << 7
    static let addressMask: UInt64 = 0x000f_ffff_ffff_f000

    /// The control registers that select the paging mode.
    public struct Mode: Sendable {
        public var cr0: UInt64
        public var cr3: UInt64
        public var cr4: UInt64
        public var efer: UInt64
        public init(cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64) {
            self.cr0 = cr0; self.cr3 = cr3; self.cr4 = cr4; self.efer = efer
        }
    }

    /// The guest physical address for `linear`, or nil if unmapped.
    public static func translate(_ linear: UInt64, mode: Mode, memory: GuestMemory) -> UInt64? {
        let paging = mode.cr0 & (1 << 31) != 0
        guard paging else { return linear }
        let pae = mode.cr4 & (1 << 5) != 0
        let longMode = mode.efer & (1 << 10) != 0
        if longMode {
            var table = mode.cr3 & addressMask
            // PML4 (bits 47:39), PDPT (38:30), PD (29:21), PT (20:12).
            for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] as [(Int, UInt64)] {
                let index = (linear >> shift) & 0x1ff
                guard let entry = try? memory.load(UInt64.self, at: table + index * 8), entry & present != 0 else { return nil }
                if level == 1 || (level <= 3 && entry & pageSizeBit != 0) {
                    let pageMask: UInt64 = (1 << shift) - 1
                    return (entry & addressMask & ~pageMask) | (linear & pageMask)
                }
                table = entry & addressMask
            }
            return nil
        }
        if pae {
            let pdptIndex = (linear >> 30) & 0x3
            guard let pdpte = try? memory.load(UInt64.self, at: (mode.cr3 & 0xffff_ffe0) + pdptIndex * 8), pdpte & present != 0 else { return nil }
            let pdIndex = (linear >> 21) & 0x1ff
            guard let pde = try? memory.load(UInt64.self, at: (pdpte & addressMask) + pdIndex * 8), pde & present != 0 else { return nil }
            if pde & pageSizeBit != 0 { return (pde & addressMask & ~0x1f_ffff) | (linear & 0x1f_ffff) }
            let ptIndex = (linear >> 12) & 0x1ff
            guard let pte = try? memory.load(UInt64.self, at: (pde & addressMask) + ptIndex * 8), pte & present != 0 else { return nil }
            return (pte & addressMask) | (linear & 0xfff)
        }
        // Legacy 32-bit paging, with 4 MiB pages when CR4.PSE is set.
        let l = linear & 0xffff_ffff
        guard let pde = try? memory.load(UInt32.self, at: (mode.cr3 & 0xffff_f000) + ((l >> 22) & 0x3ff) * 4), pde & 1 != 0 else { return nil }
        if pde & 0x80 != 0 && mode.cr4 & (1 << 4) != 0 { return UInt64(pde & 0xffc0_0000) | (l & 0x3f_ffff) }
        guard let pte = try? memory.load(UInt32.self, at: UInt64(pde & 0xffff_f000) + ((l >> 12) & 0x3ff) * 4), pte & 1 != 0 else { return nil }
        return UInt64(pte & 0xffff_f000) | (l & 0xfff)
    }

    /// Reads up to `count` bytes of instruction at `linear`, stopping at an unmapped page.
    public static func fetch(_ linear: UInt64, count: Int, mode: Mode, memory: GuestMemory) -> [UInt8] {
        var bytes: [UInt8] = []
        var address = linear
        while bytes.count < count {
            guard let phys = translate(address, mode: mode, memory: memory) else { break }
            let inPage = Int(0x1000 - (address & 0xfff))
            let n = min(count - bytes.count, inPage)
            guard let chunk = try? memory.read(at: phys, count: n) else { break }
            bytes += chunk
            address &+= UInt64(n)
        }
        return bytes
    }
}
