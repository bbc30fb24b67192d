import SwiftletMemory

/// A segment as the CPU caches it: the decoded form of a GDT descriptor,
/// field for field what `kvm_segment` holds (the VMM copies it over; KVM's
/// headers are not imported here).
public struct Segment: Sendable, Equatable {
    public var base: UInt64
    /// The byte-granular limit: with G set, the descriptor's 20-bit limit
    /// scaled to 4 KiB pages with the low 12 bits set.
    public var limit: UInt32
    public var selector: UInt16
    /// The 4-bit type (0xb: execute/read code, accessed; 0x3: read/write data, accessed; 0xb busy TSS).
    public var type: UInt8
    public var present: UInt8
    public var dpl: UInt8
    /// Default operand size (32-bit when 1); must be 0 for 64-bit code.
    public var db: UInt8
    /// 1 for code/data, 0 for system segments (the TSS).
    public var s: UInt8
    /// 64-bit code segment.
    public var l: UInt8
    /// Granularity: limit in 4 KiB units.
    public var g: UInt8
    public var avl: UInt8
    /// KVM's "unusable" flag: set for a not-present segment.
    public var unusable: UInt8

    public init(base: UInt64, limit: UInt32, selector: UInt16, type: UInt8, present: UInt8, dpl: UInt8,
                db: UInt8, s: UInt8, l: UInt8, g: UInt8, avl: UInt8, unusable: UInt8) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
        self.avl = avl
        self.unusable = unusable
    }
}

/// One 8-byte GDT descriptor.
///
/// `flags` packs the access byte (bits 0-7: type, S, DPL, P) and the
/// flags nibble (bits 12-15: AVL, L, D/B, G), the compact form boot code
/// usually writes, such as 0xa09b for 64-bit kernel code.
public struct SegmentDescriptor: Sendable, Equatable {
    /// The raw 64-bit descriptor.
    public var raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// Encodes `flags`, a 32-bit `base` and a 20-bit `limit` (higher limit bits are dropped).
    public init(flags: UInt16, base: UInt32, limit: UInt32) {
        let f = UInt64(flags & 0xf0ff)
        let b = UInt64(base)
        let lim = UInt64(limit)
        raw = (lim & 0xffff)                      // limit 15:0 -> bits 15:0
            | ((b & 0x00ff_ffff) << 16)           // base 23:0 -> bits 39:16
            | (f << 40)                           // access byte -> 47:40, flags -> 55:52
            | ((lim & 0xf_0000) << 32)            // limit 19:16 -> bits 51:48
            | ((b & 0xff00_0000) << 32)           // base 31:24 -> bits 63:56
    }

    /// The 32-bit base.
    public var base: UInt32 {
        UInt32((raw >> 16) & 0xff_ffff) | UInt32((raw >> 56) & 0xff) << 24
    }
    /// The raw 20-bit limit, unscaled.
    public var limit: UInt32 { UInt32(raw & 0xffff) | UInt32((raw >> 48) & 0xf) << 16 }
    /// The access byte and flags nibble, in the `init(flags:)` layout.
    public var flags: UInt16 { UInt16((raw >> 40) & 0xf0ff) }

    /// The cached form of this descriptor when loaded with `selector`.
    public func segment(selector: UInt16) -> Segment {
        let access = UInt8(flags & 0xff)
        let bit = { (n: UInt64) -> UInt8 in UInt8((raw >> n) & 1) }
        let g = bit(55)
        let present = access >> 7
        return Segment(
            base: UInt64(base),
            limit: g == 1 ? (limit << 12) | 0xfff : limit,
            selector: selector,
            type: access & 0xf,
            present: present,
            dpl: (access >> 5) & 0x3,
            db: bit(54),
            s: (access >> 4) & 1,
            l: bit(53),
            g: g,
            avl: bit(52),
            unusable: present == 0 ? 1 : 0
        )
    }
}

/// The boot GDT: null, 64-bit code, data and TSS, at `Layout.gdtAddress`.
public enum GDT {
    /// 64-bit code: present, ring 0, execute/read, L=1, G=1.
    public static let codeFlags: UInt16 = 0xa09b
    /// Data: present, ring 0, read/write, D/B=1, G=1.
    public static let dataFlags: UInt16 = 0xc093
    /// TSS: present, busy 64-bit TSS, G=1. Only there because VMX wants a usable TR.
    public static let tssFlags: UInt16 = 0x808b

    /// The four boot descriptors, all base 0 and limit 0xfffff.
    public static let bootTable: [SegmentDescriptor] = [
        SegmentDescriptor(raw: 0),
        SegmentDescriptor(flags: codeFlags, base: 0, limit: 0xfffff),
        SegmentDescriptor(flags: dataFlags, base: 0, limit: 0xfffff),
        SegmentDescriptor(flags: tssFlags, base: 0, limit: 0xfffff),
    ]

    /// GDTR limit: size of the table minus one.
    public static var limit: UInt16 { UInt16(bootTable.count * 8 - 1) }
    /// IDTR limit for the empty boot IDT.
    public static let idtLimit: UInt16 = 7

    /// CS: descriptor 1.
    public static var bootCodeSegment: Segment { bootTable[1].segment(selector: 0x08) }
    /// DS, ES, FS, GS, SS: descriptor 2.
    public static var bootDataSegment: Segment { bootTable[2].segment(selector: 0x10) }
    /// TR: descriptor 3.
    public static var bootTSSSegment: Segment { bootTable[3].segment(selector: 0x18) }

    /// Writes the boot GDT at `Layout.gdtAddress` and an empty (zero) IDT at `Layout.idtAddress`.
    public static func write(into memory: GuestMemory) throws(X86BootError) {
        do {
            for (i, d) in bootTable.enumerated() {
                try memory.store(d.raw, at: Layout.gdtAddress + UInt64(i * 8))
            }
            try memory.store(UInt64(0), at: Layout.idtAddress)
        } catch {
            throw .memory(error)
        }
    }
}
