/// One CPUID leaf/subleaf as KVM_GET_SUPPORTED_CPUID returns it and
/// KVM_SET_CPUID2 takes it (`kvm_cpuid_entry2`, without the padding).
public struct CPUIDEntry: Sendable, Equatable {
    /// The leaf (EAX input).
    public var function: UInt32
    /// The subleaf (ECX input), meaningful when `flags` has `significantIndex`.
    public var index: UInt32
    /// KVM_CPUID_FLAG_* bits.
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    /// KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry depends on ECX.
    public static let significantIndex: UInt32 = 1

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// Which CPU model the guest sees.
public enum CPUTemplate: Sendable, Equatable {
    /// What KVM supports on this host, with only the topology made consistent.
    case host
    /// The host model minus the features a nested PVM host (a KVM "pvm"
    /// hypervisor running inside a VM, which emulates more of the CPU) fails
    /// on. See `CPUID.pvmSafeClears`.
    case pvmSafe
}

/// One output register of a CPUID leaf.
public enum CPUIDRegister: Sendable, Equatable {
    case eax, ebx, ecx, edx
}

/// A CPUID bit the `.pvmSafe` template clears, and why.
public struct CPUIDFeatureBit: Sendable {
    public let function: UInt32
    /// The subleaf, or nil for every subleaf.
    public let index: UInt32?
    public let register: CPUIDRegister
    public let bit: UInt32
    public let name: String
    public let why: String
}

/// CPUID normalization: making KVM's supported list into what one vCPU of
/// this VM should report.
public enum CPUID {
    // Leaf numbers.
    static let leafVendor: UInt32 = 0x0
    static let leafFeatures: UInt32 = 0x1
    static let leafCacheParams: UInt32 = 0x4
    static let leafExtendedFeatures: UInt32 = 0x7
    static let leafTopology: UInt32 = 0xb
    static let leafXSAVE: UInt32 = 0xd
    static let leafTopologyV2: UInt32 = 0x1f
    static let leafKVMSignature: UInt32 = 0x4000_0000
    static let leafKVMFeatures: UInt32 = 0x4000_0001
    static let leafExtFeatures: UInt32 = 0x8000_0001
    static let leafAddressSizes: UInt32 = 0x8000_0008
    static let leafAMDTopology: UInt32 = 0x8000_001e
    static let leafAMDEncryption: UInt32 = 0x8000_001f

    // Leaf 1 bits we set.
    static let hypervisorBit: UInt32 = 1 << 31  // ECX
    static let httBit: UInt32 = 1 << 28         // EDX: more than one logical CPU per package
    /// CLFLUSH line size in 8-byte units (64 bytes).
    static let clflushLineSize: UInt32 = 8

    // Topology level types in leaves 0xB / 0x1F ECX[15:8].
    static let levelSMT: UInt32 = 1
    static let levelCore: UInt32 = 2

    /// Features `.pvmSafe` removes, each with its reason. A nested PVM host
    /// runs its guests without hardware virtualization underneath and emulates
    /// more of the CPU; "emulator" below is that emulator, which fails on
    /// these instructions or the state behind them. The AVX family goes
    /// because its state lives in XSAVE areas, which are turned off.
    public static let pvmSafeClears: [CPUIDFeatureBit] = {
        func b(_ f: UInt32, _ i: UInt32?, _ r: CPUIDRegister, _ bit: UInt32, _ n: String, _ why: String) -> CPUIDFeatureBit {
            CPUIDFeatureBit(function: f, index: i, register: r, bit: bit, name: n, why: why)
        }
        let emu = "the nested PVM emulator fails on it"
        let avx = "AVX family: needs XSAVE, which is cleared"
        let nested = "no nested virtualization inside the guest"
        return [
            // Leaf 1 ECX. Kept: SSE3-SSE4.2, MOVBE, X2APIC, TSC_DEADLINE (the
            // LAPIC timer mode Linux prefers), AES.
            b(0x1, nil, .ecx, 3, "MONITOR", "MONITOR/MWAIT idle: " + emu),
            b(0x1, nil, .ecx, 13, "CX16", "LOCK CMPXCHG16B (SLUB's double-word cmpxchg): seen failing in the emulator"),
            b(0x1, nil, .ecx, 5, "VMX", nested),
            b(0x1, nil, .ecx, 6, "SMX", "safer mode (GETSEC): " + emu),
            b(0x1, nil, .ecx, 12, "FMA", avx),
            b(0x1, nil, .ecx, 15, "PDCM", "IA32_PERF_CAPABILITIES: " + emu),
            b(0x1, nil, .ecx, 17, "PCID", "PCID-tagged CR3 loads: " + emu),
            b(0x1, nil, .ecx, 23, "POPCNT", emu),
            b(0x1, nil, .ecx, 26, "XSAVE", "XSAVE/XRSTOR/XSETBV: " + emu),
            b(0x1, nil, .ecx, 27, "OSXSAVE", "follows XSAVE"),
            b(0x1, nil, .ecx, 28, "AVX", avx),
            b(0x1, nil, .ecx, 29, "F16C", avx),
            b(0x1, nil, .ecx, 30, "RDRAND", emu),
            // Leaf 7 subleaf 0 EBX. Kept: BMI1, SMEP, BMI2, ADX, SHA.
            b(0x7, 0, .ebx, 0, "FSGSBASE", "RD/WRFSBASE, RD/WRGSBASE: " + emu),
            b(0x7, 0, .ebx, 4, "HLE", "transactional memory: " + emu),
            b(0x7, 0, .ebx, 5, "AVX2", avx),
            b(0x7, 0, .ebx, 9, "ERMS", "makes the kernel pick REP MOVSB/STOSB: " + emu),
            b(0x7, 0, .ebx, 10, "INVPCID", "follows PCID"),
            b(0x7, 0, .ebx, 11, "RTM", "transactional memory: " + emu),
            b(0x7, 0, .ebx, 14, "MPX", "bound registers are XSAVE state"),
            b(0x7, 0, .ebx, 16, "AVX512F", avx),
            b(0x7, 0, .ebx, 17, "AVX512DQ", avx),
            b(0x7, 0, .ebx, 18, "RDSEED", emu),
            b(0x7, 0, .ebx, 20, "SMAP", "STAC/CLAC and EFLAGS.AC checks: " + emu),
            b(0x7, 0, .ebx, 21, "AVX512IFMA", avx),
            b(0x7, 0, .ebx, 23, "CLFLUSHOPT", emu),
            b(0x7, 0, .ebx, 24, "CLWB", emu),
            b(0x7, 0, .ebx, 26, "AVX512PF", avx),
            b(0x7, 0, .ebx, 27, "AVX512ER", avx),
            b(0x7, 0, .ebx, 28, "AVX512CD", avx),
            b(0x7, 0, .ebx, 30, "AVX512BW", avx),
            b(0x7, 0, .ebx, 31, "AVX512VL", avx),
            // Leaf 7 subleaf 0 ECX.
            b(0x7, 0, .ecx, 1, "AVX512_VBMI", avx),
            b(0x7, 0, .ecx, 2, "UMIP", emu),
            b(0x7, 0, .ecx, 3, "PKU", "PKRU is XSAVE state"),
            b(0x7, 0, .ecx, 4, "OSPKE", "follows PKU"),
            b(0x7, 0, .ecx, 5, "WAITPKG", "UMONITOR/UMWAIT/TPAUSE: " + emu),
            b(0x7, 0, .ecx, 6, "AVX512_VBMI2", avx),
            b(0x7, 0, .ecx, 9, "VAES", avx),
            b(0x7, 0, .ecx, 10, "VPCLMULQDQ", avx),
            b(0x7, 0, .ecx, 11, "AVX512_VNNI", avx),
            b(0x7, 0, .ecx, 12, "AVX512_BITALG", avx),
            b(0x7, 0, .ecx, 14, "AVX512_VPOPCNTDQ", avx),
            b(0x7, 0, .ecx, 16, "LA57", "5-level paging: " + emu),
            b(0x7, 0, .ecx, 22, "RDPID", "reads TSC_AUX: " + emu),
            // Leaf 7 subleaf 0 EDX. Kept: the speculation-control bits.
            b(0x7, 0, .edx, 2, "AVX512_4VNNIW", avx),
            b(0x7, 0, .edx, 3, "AVX512_4FMAPS", avx),
            b(0x7, 0, .edx, 4, "FSRM", "makes the kernel pick REP MOVSB: " + emu),
            b(0x7, 0, .edx, 8, "AVX512_VP2INTERSECT", avx),
            b(0x7, 0, .edx, 22, "AMX_BF16", avx),
            b(0x7, 0, .edx, 23, "AVX512_FP16", avx),
            b(0x7, 0, .edx, 24, "AMX_TILE", avx),
            b(0x7, 0, .edx, 25, "AMX_INT8", avx),
            // Extended leaves. Kept: PDPE1GB (1 GiB pages), LM, NX, SYSCALL.
            b(0x8000_0001, nil, .ecx, 2, "SVM", nested),
            b(0x8000_0001, nil, .ecx, 5, "ABM/LZCNT", "LZCNT (and POPCNT on AMD): " + emu),
            b(0x8000_0001, nil, .ecx, 29, "MONITORX", "MONITORX/MWAITX idle: " + emu),
            b(0x8000_0001, nil, .edx, 27, "RDTSCP", "reads TSC_AUX: " + emu),
            b(0x8000_0008, nil, .ebx, 0, "CLZERO", emu),
            b(0x8000_0008, nil, .ebx, 9, "WBNOINVD", "cache writeback: " + emu),
        ]
    }()

    /// KVM paravirtual features (leaf 0x40000001 EAX) `.pvmSafe` keeps: the
    /// kvmclock bits (CLOCKSOURCE 0, NOP_IO_DELAY 1, CLOCKSOURCE2 3,
    /// CLOCKSOURCE_STABLE 24). Everything else (async page faults, steal time,
    /// PV EOI, PV unhalt and spinlocks, PV TLB flush, PV IPIs, poll control,
    /// sched yield, extended MSI destination IDs, hypercall-based GPA range
    /// mapping, migration control) rides on hypercalls, shared pages or MSRs
    /// that are risky under a nested PVM host, and the guest runs fine without.
    public static let pvmSafeKVMFeatures: UInt32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 24)

    /// Whole leaves `.pvmSafe` zeroes: XSAVE enumeration (0xD, since XSAVE is
    /// off) and AMD memory encryption (0x8000001F: with SME advertised the
    /// kernel issues WBINVD, which the emulator fails on).
    public static let pvmSafeZeroedLeaves: [UInt32] = [leafXSAVE, leafAMDEncryption]

    /// Normalizes `entries` (KVM's supported CPUID) for vCPU `cpuIndex` of
    /// `cpuCount`, modelled as one socket of `cpuCount` single-threaded cores.
    ///
    /// For every template: leaf 1 initial APIC ID, logical count, CLFLUSH size,
    /// HTT and the hypervisor bit; the topology leaves 4, 0xB, 0x1F (and AMD's
    /// 0x80000008 / 0x8000001E) consistent with `cpuCount`. `.pvmSafe` then
    /// clears the features in `pvmSafeClears`, zeroes `pvmSafeZeroedLeaves`
    /// and masks the KVM PV features to `pvmSafeKVMFeatures`.
    ///
    /// `vendorOverride`, when given, replaces the vendor string in leaf 0; it
    /// is padded with spaces or cut to the 12 bytes the leaf holds.
    public static func normalize(
        _ entries: [CPUIDEntry], cpuIndex: Int, cpuCount: Int, template: CPUTemplate, vendorOverride: String? = nil
    ) -> [CPUIDEntry] {
        let count = UInt32(clamping: max(cpuCount, 1))
        let apicID = UInt32(clamping: max(cpuIndex, 0))
        // Bits needed to number the cores: the x2APIC ID shift at the core level.
        let coreBits = UInt32(count <= 1 ? 0 : 32 - (count - 1).leadingZeroBitCount)
        let isAMD = entries.first { $0.function == leafVendor }.map { vendor(of: $0) == "AuthenticAMD" } ?? false

        var out: [CPUIDEntry] = []
        out.reserveCapacity(entries.count)
        for var e in entries {
            switch e.function {
            case leafVendor:
                if let v = vendorOverride { setVendor(&e, v) }
            case leafFeatures:
                e.ebx = (apicID & 0xff) << 24 | (min(count, 255) << 16) | (clflushLineSize << 8) | (e.ebx & 0xff)
                e.ecx |= hypervisorBit
                if count > 1 { e.edx |= httBit } else { e.edx &= ~httBit }
            case leafCacheParams:
                // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing
                // this cache - 1: private L1/L2 (one thread per core), shared L3.
                let level = (e.eax >> 5) & 0x7
                let sharing = level >= 3 ? min(count - 1, 0xfff) : 0
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (min(count - 1, 0x3f) << 26)
            case leafTopology, leafTopologyV2:
                setTopology(&e, apicID: apicID, count: count, coreBits: coreBits)
            case leafAddressSizes where isAMD:
                // ECX[7:0] cores - 1, ECX[15:12] APIC ID bits for the core.
                e.ecx = (e.ecx & ~0xf0ff) | (coreBits << 12) | min(count - 1, 0xff)
            case leafAMDTopology where isAMD:
                e.eax = apicID                  // extended APIC ID
                e.ebx = apicID & 0xff           // compute unit ID; 1 thread per unit
                e.ecx = 0                       // node 0, one node per package
                e.edx = 0
            default:
                break
            }
            if template == .pvmSafe { applyPVMSafe(&e) }
            out.append(e)
        }
        return out
    }

    /// Sets leaf 0xB / 0x1F subleaf `e.index`: SMT level (1 thread), core level
    /// (`count` cores), then the invalid terminator levels. EDX is the x2APIC ID at every level.
    static func setTopology(_ e: inout CPUIDEntry, apicID: UInt32, count: UInt32, coreBits: UInt32) {
        switch e.index {
        case 0:
            e.eax = 0
            e.ebx = 1
            e.ecx = levelSMT << 8
        case 1:
            e.eax = coreBits
            e.ebx = count
            e.ecx = levelCore << 8 | 1
        default:
            e.eax = 0
            e.ebx = 0
            e.ecx = e.index & 0xff
        }
        e.edx = apicID
    }

    static func applyPVMSafe(_ e: inout CPUIDEntry) {
        if pvmSafeZeroedLeaves.contains(e.function) {
            e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            return
        }
        if e.function == leafKVMFeatures {
            e.eax &= pvmSafeKVMFeatures
        }
        for f in pvmSafeClears where f.function == e.function && (f.index == nil || f.index == e.index) {
            let mask = ~(UInt32(1) << f.bit)
            switch f.register {
            case .eax: e.eax &= mask
            case .ebx: e.ebx &= mask
            case .ecx: e.ecx &= mask
            case .edx: e.edx &= mask
            }
        }
    }

    /// The 12-byte vendor string of a leaf 0 entry (EBX, EDX, ECX).
    public static func vendor(of e: CPUIDEntry) -> String {
        var bytes: [UInt8] = []
        for r in [e.ebx, e.edx, e.ecx] {
            for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: r >> (UInt32(i) * 8))) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func setVendor(_ e: inout CPUIDEntry, _ vendor: String) {
        var bytes = Array(vendor.utf8.prefix(12))
        while bytes.count < 12 { bytes.append(0x20) }
        func word(_ i: Int) -> UInt32 {
            UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
        }
        e.ebx = word(0)
        e.edx = word(4)
        e.ecx = word(8)
    }
}
