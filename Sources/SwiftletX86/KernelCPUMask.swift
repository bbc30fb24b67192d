/// Hiding CPU features from a Linux guest through its command line.
///
/// On nested PVM KVM the guest's CPUID for the standard leaves (0-0xD,
/// 0x80000001) comes from the host CPU, whatever `KVM_SET_CPUID2` says:
/// Swiftlet measured it with a tiny guest (see `kernels/README.md`). Only
/// KVM's own leaves (0x40000000+) follow the VMM's table. So on such a host
/// the same features `CPUID.pvmSafeClears` lists are also cleared through
/// the kernel's `noxsave` and `clearcpuid=` options, which act on the
/// kernel's own view of the CPU (its alternatives and feature checks).
public enum KernelCPUMask {
    /// Linux 6.1's capability word for a CPUID (leaf, subleaf, register),
    /// from arch/x86/include/asm/cpufeatures.h.
    public static func capabilityWord(function: UInt32, index: UInt32?, register: CPUIDRegister) -> Int? {
        switch (function, index ?? 0, register) {
        case (0x1, _, .edx): return 0
        case (0x8000_0001, _, .edx): return 1
        case (0x1, _, .ecx): return 4
        case (0x8000_0001, _, .ecx): return 6
        case (0x7, 0, .ebx): return 9
        case (0x7, 1, .eax): return 12
        case (0x8000_0008, _, .ebx): return 13
        case (0x7, 0, .ecx): return 16
        case (0x7, 0, .edx): return 18
        default: return nil
        }
    }

    /// The kernel's capability number (word * 32 + bit) for a feature bit.
    public static func capabilityNumber(_ f: CPUIDFeatureBit) -> Int? {
        capabilityWord(function: f.function, index: f.index, register: f.register).map { $0 * 32 + Int(f.bit) }
    }

    /// Features hidden by CPUID where it works, but left off the command line.
    /// An array, not a `Set<String>`: that generic type is instantiated at
    /// run time, and checking `String: Hashable` for it scans every protocol
    /// conformance in the binary on the start-up path (issue 19).
    static let notExecutedByTheKernel = ["VMX", "SMX", "SVM", "PDCM", "HLE", "RTM", "MONITORX", "CLZERO"]

    /// `clearcpuid=` takes at most 127 characters in Linux 6.1 (a 128-byte buffer).
    public static let clearcpuidLimit = 127

    /// Kernel arguments that hide `features` from a Linux guest: one
    /// `clearcpuid=` with their capability numbers, XSAVE first (clearing it
    /// also clears everything that depends on it through the kernel's
    /// cpuid_deps table: the AVX family, PKU, MPX). `noxsave` would do the
    /// same for XSAVE, but the kernel passes such bare words on to init as
    /// arguments, so Swiftlet does not use it.
    public static func kernelArguments(hiding features: [CPUIDFeatureBit] = CPUID.pvmSafeClears) -> [String] {
        var args: [String] = []
        var numbers: [Int] = []
        for f in features {
            if f.name == "XSAVE" { if let n = capabilityNumber(f) { numbers.insert(n, at: 0) }; continue }
            // noxsave takes these along through the kernel's cpuid_deps table.
            if f.why.hasPrefix("AVX family") || ["OSXSAVE", "PKU", "OSPKE", "MPX"].contains(f.name) { continue }
            // The command line has room for about 20 numbers: leave out what
            // no kernel code path of ours executes (virtualization, TSX,
            // perf capabilities, AMD-only idle and cache instructions).
            if notExecutedByTheKernel.contains(f.name) { continue }
            if let n = capabilityNumber(f) { numbers.append(n) }
        }
        var list = ""
        for n in numbers {
            let item = (list.isEmpty ? "" : ",") + String(n)
            if "clearcpuid=".count + list.count + item.count > clearcpuidLimit { break }
            list += item
        }
        if !list.isEmpty { args.append("clearcpuid=" + list) }
        return args
    }
}
