import CSwiftlet

/// Whether a guest that booted with one CPUID table can go on running on a
/// host that would give it another: the vendor and the sizes software caches
/// (XSAVE area, address widths) must be equal, and every feature the guest
/// saw must still be there. A kernel that saw AVX-512 and resumes on a CPU
/// without it would fault at its next vector instruction.
enum CPUIDCompatibility {
    /// Registers compared as feature sets: (leaf, subleaf, register index 0-3 = eax...edx).
    static let featureRegisters: [(UInt32, UInt32, Int)] = [
        (0x1, 0, 2), (0x1, 0, 3),
        (0x7, 0, 1), (0x7, 0, 2), (0x7, 0, 3),
        (0xd, 0, 0), (0xd, 1, 0),
        (0x8000_0001, 0, 2), (0x8000_0001, 0, 3),
    ]
    /// Registers that must be equal: the vendor string, the XSAVE area's
    /// largest size, the physical and linear address widths.
    static let equalRegisters: [(UInt32, UInt32, Int)] = [
        (0x0, 0, 1), (0x0, 0, 2), (0x0, 0, 3),
        (0xd, 0, 2),
        (0x8000_0008, 0, 0),
    ]

    /// nil when `host` can run a guest that saw `snapshot`; else why not.
    static func mismatch(snapshot: [kvm_cpuid_entry2], host: [kvm_cpuid_entry2]) -> String? {
        func value(_ table: [kvm_cpuid_entry2], _ leaf: UInt32, _ sub: UInt32, _ reg: Int) -> UInt32? {
            guard let e = table.first(where: { $0.function == leaf && ($0.index == sub || $0.flags & UInt32(KVM_CPUID_FLAG_SIGNIFCANT_INDEX) == 0) }) else { return nil }
            return [e.eax, e.ebx, e.ecx, e.edx][reg]
        }
        func name(_ leaf: UInt32, _ sub: UInt32, _ reg: Int) -> String {
            "leaf 0x\(String(leaf, radix: 16)).\(sub) \(["eax", "ebx", "ecx", "edx"][reg])"
        }
        for (leaf, sub, reg) in featureRegisters {
            guard let saw = value(snapshot, leaf, sub, reg) else { continue }
            let has = value(host, leaf, sub, reg) ?? 0
            if saw & ~has != 0 {
                return "\(name(leaf, sub, reg)): the guest saw features 0x\(String(saw & ~has, radix: 16)) this host lacks"
            }
        }
        for (leaf, sub, reg) in equalRegisters {
            let saw = value(snapshot, leaf, sub, reg)
            let has = value(host, leaf, sub, reg)
            if saw != has {
                return "\(name(leaf, sub, reg)) is 0x\(String(saw ?? 0, radix: 16)) in the snapshot, 0x\(String(has ?? 0, radix: 16)) here"
            }
        }
        return nil
    }
}
