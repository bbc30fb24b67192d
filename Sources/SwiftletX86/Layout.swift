/// Where things live in guest-physical memory for a direct 64-bit boot.
///
/// Low memory (below 1 MiB) holds the boot structures the kernel reads before
/// it has its own allocator; the kernel itself goes at 16 MiB, its physical
/// link address. RAM is split around a 1 GiB MMIO gap below 4 GiB, where the
/// device windows and the APICs sit.
public enum Layout {
    /// Page size used for alignment of everything we place.
    public static let pageSize: UInt64 = 0x1000

    // ---- boot structures below 1 MiB -------------------------------------------------
    /// The boot GDT (4 descriptors, 32 bytes).
    public static let gdtAddress: UInt64 = 0x500
    /// An empty IDT (8 zero bytes): interrupts stay off until the kernel loads its own.
    public static let idtAddress: UInt64 = 0x520
    /// `boot_params`, the zero page (4 KiB). RSI points here at entry.
    public static let zeroPage: UInt64 = 0x7000
    /// Initial stack pointer (RSP/RBP); the stack grows down towards 0x8000.
    public static let bootStack: UInt64 = 0x8ff0
    /// The PML4 page; CR3 points here.
    public static let pml4: UInt64 = 0x9000
    /// The one PDPT page, covering the first 512 GiB.
    public static let pdpte: UInt64 = 0xa000
    /// The first of four page-directory pages (0xb000...0xefff), 1 GiB each with 2 MiB pages.
    public static let pde: UInt64 = 0xb000
    /// How many page-directory pages: 4 GiB identity-mapped.
    public static let pdeCount = 4
    /// The kernel command line. Above the page tables, below the EBDA.
    public static let cmdline: UInt64 = 0x20000
    /// Hard cap on the command line, NUL included, whatever the kernel header says.
    public static let cmdlineMax = 0x10000

    /// The MP floating pointer and table: the last KiB of base memory (639 KiB),
    /// one of the places Linux scans.
    public static let mptableStart: UInt64 = 0x9fc00
    /// The extended BIOS data area we pretend to have (reserved in E820).
    public static let ebdaStart: UInt64 = 0x9fc00
    /// Start of the reserved area below 1 MiB: EBDA, VGA hole and BIOS ROM.
    public static let systemReservedStart: UInt64 = 0x9fc00
    /// End of the reserved area (exclusive) and start of high memory.
    public static let systemReservedEnd: UInt64 = 0x100000
    /// 1 MiB: where "high memory" starts; no kernel segment may go lower.
    public static let highMemory: UInt64 = 0x100000
    /// Where the kernel is loaded when it does not say otherwise (its physical link address).
    public static let kernelLoadDefault: UInt64 = 0x1000000

    // ---- the MMIO gap below 4 GiB -----------------------------------------------------
    /// Start of the MMIO gap (3 GiB). RAM beyond this goes above 4 GiB.
    public static let mmioGapStart: UInt64 = 0xC000_0000
    /// End of the MMIO gap (4 GiB, exclusive).
    public static let mmioGapEnd: UInt64 = 0x1_0000_0000
    /// The boot timer device (one page): the guest writes here to mark boot done.
    public static let bootTimer: UInt64 = 0xC000_0000
    /// The first virtio-mmio device window; later ones follow page by page.
    public static let firstVirtioMMIO: UInt64 = 0xC000_1000
    /// The IOAPIC's MMIO base (architectural default).
    public static let ioapic: UInt64 = 0xFEC0_0000
    /// The local APIC's MMIO base (architectural default).
    public static let lapic: UInt64 = 0xFEE0_0000
    /// KVM_SET_TSS_ADDR: three pages KVM needs for real-mode emulation on Intel.
    public static let kvmTSS: UInt64 = 0xFFFB_D000
    /// KVM_SET_IDENTITY_MAP_ADDR: the one page before the TSS.
    public static let kvmIdentityMap: UInt64 = 0xFFFB_C000

    /// Splits `memoryBytes` of RAM around the MMIO gap: up to 3 GiB from
    /// address 0, the rest from 4 GiB.
    ///
    /// `memoryBytes` is rounded down to whole pages; zero or negative gives no ranges.
    public static func ramRanges(memoryBytes: Int) -> [(base: UInt64, size: Int)] {
        guard memoryBytes > 0 else { return [] }
        let total = UInt64(memoryBytes) & ~(pageSize - 1)
        guard total > 0 else { return [] }
        if total <= mmioGapStart { return [(base: 0, size: Int(total))] }
        return [
            (base: 0, size: Int(mmioGapStart)),
            (base: mmioGapEnd, size: Int(total - mmioGapStart)),
        ]
    }

    /// One past the last byte of RAM below the MMIO gap, for these ranges.
    public static func lowRAMEnd(_ ram: [(base: UInt64, size: Int)]) -> UInt64 {
        var end: UInt64 = 0
        for r in ram where r.base < mmioGapStart {
            end = max(end, min(r.base + UInt64(r.size), mmioGapStart))
        }
        return end
    }
}
