import SwiftletMemory

/// The Intel MultiProcessor Specification 1.4 table: how a guest without
/// ACPI learns its CPUs, its IOAPIC and how ISA IRQs reach it.
///
/// Layout at `Layout.mptableStart` (the last KiB of base memory, which Linux
/// scans): the 16-byte floating pointer, then the configuration table header
/// and its entries. At 254 CPUs it is about 5 KiB, which runs past the EBDA
/// into the legacy area; all of [0x9fc00, 1 MiB) is reserved in the E820
/// map, so that is fine.
public enum MPTable {
    /// APIC IDs 0...253 go to CPUs, 254 to the IOAPIC; 255 is the broadcast ID.
    public static let maxCPUs = 254

    static let floatingPointerSize = 16
    static let headerSize = 44
    static let processorEntrySize = 20
    static let shortEntrySize = 8
    /// ISA IRQs 0-23, one per IOAPIC pin.
    static let ioapicPins = 24

    static let specRevision: UInt8 = 4  // MP spec 1.4
    static let lapicVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x11
    static let oemID = Array("SWIFTLET".utf8)          // 8 bytes
    static let productID = Array("MICROVM     ".utf8)  // 12 bytes
    static let busTypeISA = Array("ISA   ".utf8)       // 6 bytes
    static let isaBusID: UInt8 = 0
    /// CPU signature in the processor entries: family 6, as KVM presents.
    static let cpuSignature: UInt32 = 0x600
    /// Feature flags in the processor entries: FPU and on-chip APIC (CPUID 1 EDX bits 0, 9).
    static let cpuFeatures: UInt32 = 0x201

    // Entry types.
    static let entryProcessor: UInt8 = 0
    static let entryBus: UInt8 = 1
    static let entryIOAPIC: UInt8 = 2
    static let entryIOInterrupt: UInt8 = 3
    static let entryLocalInterrupt: UInt8 = 4
    // Interrupt types.
    static let intTypeINT: UInt8 = 0
    static let intTypeNMI: UInt8 = 1
    static let intTypeExtINT: UInt8 = 3
    // Processor flags.
    static let cpuEnabled: UInt8 = 1 << 0
    static let cpuBootstrap: UInt8 = 1 << 1

    /// Bytes the table takes for `cpuCount` CPUs.
    public static func size(cpuCount: Int) -> Int {
        floatingPointerSize + headerSize + cpuCount * processorEntrySize
            + shortEntrySize * (1 + 1 + ioapicPins + 2)  // bus, IOAPIC, I/O interrupts, 2 local interrupts
    }

    /// The IOAPIC's ID: the first one after the CPUs' APIC IDs.
    public static func ioapicID(cpuCount: Int) -> UInt8 { UInt8(cpuCount) }

    /// Builds the whole table (floating pointer first) as it goes at `base`.
    public static func build(cpuCount: Int, base: UInt64 = Layout.mptableStart) throws(X86BootError) -> [UInt8] {
        guard (1...maxCPUs).contains(cpuCount) else { throw .invalidCPUCount(cpuCount) }
        let total = size(cpuCount: cpuCount)
        guard base >= Layout.systemReservedStart, UInt64(total) <= Layout.systemReservedEnd - base else {
            throw .mptableTooLarge(total)
        }
        var t = [UInt8](repeating: 0, count: total)
        let ioapicID = ioapicID(cpuCount: cpuCount)

        // Floating pointer: "_MP_", physical address of the config table,
        // length in 16-byte units, revision; feature byte 1 = 0 means "a
        // config table is present", feature byte 2 = 0 means no IMCR (virtual wire).
        t.replaceSubrange(0..<4, with: Array("_MP_".utf8))
        t.putLE(UInt32(base) + UInt32(floatingPointerSize), at: 4)
        t[8] = 1
        t[9] = specRevision

        // Configuration table header; entries follow it.
        let h = floatingPointerSize
        t.replaceSubrange(h..<(h + 4), with: Array("PCMP".utf8))
        t.putLE(UInt16(total - floatingPointerSize), at: h + 4)  // base table length
        t[h + 6] = specRevision
        t.replaceSubrange((h + 8)..<(h + 16), with: oemID)
        t.replaceSubrange((h + 16)..<(h + 28), with: productID)
        // OEM table pointer and size stay 0.
        t.putLE(UInt32(Layout.lapic), at: h + 36)
        // Extended table length and checksum stay 0.

        var o = h + headerSize
        var entries = 0
        for cpu in 0..<cpuCount {
            t[o] = entryProcessor
            t[o + 1] = UInt8(cpu)  // local APIC ID = CPU index, as the CPUID normalization sets
            t[o + 2] = lapicVersion
            t[o + 3] = cpuEnabled | (cpu == 0 ? cpuBootstrap : 0)
            t.putLE(cpuSignature, at: o + 4)
            t.putLE(cpuFeatures, at: o + 8)
            o += processorEntrySize
            entries += 1
        }

        t[o] = entryBus
        t[o + 1] = isaBusID
        t.replaceSubrange((o + 2)..<(o + 8), with: busTypeISA)
        o += shortEntrySize
        entries += 1

        t[o] = entryIOAPIC
        t[o + 1] = ioapicID
        t[o + 2] = ioapicVersion
        t[o + 3] = 1  // enabled
        t.putLE(UInt32(Layout.ioapic), at: o + 4)
        o += shortEntrySize
        entries += 1

        // ISA IRQ n -> IOAPIC pin n. KVM's default GSI routing sends GSI n to
        // IOAPIC pin n (n < 24), the in-kernel PIT included (GSI 0 -> pin 0),
        // so there is no IRQ0 -> pin 2 override as on real chipsets.
        // Flags 0: polarity and trigger conform to the bus (ISA: edge, high).
        for irq in 0..<ioapicPins {
            t[o] = entryIOInterrupt
            t[o + 1] = intTypeINT
            t[o + 4] = isaBusID
            t[o + 5] = UInt8(irq)
            t[o + 6] = ioapicID
            t[o + 7] = UInt8(irq)
            o += shortEntrySize
            entries += 1
        }

        // Local interrupts: the PIC's ExtINT to the BSP's LINT0 (virtual
        // wire mode), NMI to LINT1 of every CPU.
        for (type, destAPIC, lint) in [(intTypeExtINT, UInt8(0), UInt8(0)), (intTypeNMI, UInt8(0xff), UInt8(1))] {
            t[o] = entryLocalInterrupt
            t[o + 1] = type
            t[o + 4] = isaBusID
            t[o + 5] = 0
            t[o + 6] = destAPIC
            t[o + 7] = lint
            o += shortEntrySize
            entries += 1
        }
        precondition(o == total)
        t.putLE(UInt16(entries), at: h + 34)

        // Checksums: each structure's bytes sum to 0 mod 256.
        t[h + 7] = checksum(t[h..<total])
        t[10] = checksum(t[0..<floatingPointerSize])
        return t
    }

    /// Writes the table for `cpuCount` CPUs at `Layout.mptableStart`.
    public static func write(into memory: GuestMemory, cpuCount: Int) throws(X86BootError) {
        let table = try build(cpuCount: cpuCount)
        do { try memory.write(table, at: Layout.mptableStart) } catch { throw .memory(error) }
    }

    /// The byte that makes `bytes` (with it in place of a zero) sum to 0.
    static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }
}
