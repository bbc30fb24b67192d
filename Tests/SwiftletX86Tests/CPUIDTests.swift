import Testing
@testable import SwiftletX86

@Suite struct CPUIDTests {
    static func word(_ s: String) -> UInt32 {
        let b = Array(s.utf8)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    /// Roughly what KVM_GET_SUPPORTED_CPUID gives on an Intel host.
    static let host: [CPUIDEntry] = [
        CPUIDEntry(function: 0, eax: 0x1f, ebx: word("Genu"), ecx: word("ntel"), edx: word("ineI")),
        CPUIDEntry(function: 1, eax: 0x806f8, ebx: 0x0010_0800, ecx: 0xf7fa_3223, edx: 0x0f8b_fbff),
        CPUIDEntry(function: 4, index: 0, flags: 1, eax: 0x1c00_4121),
        CPUIDEntry(function: 4, index: 3, flags: 1, eax: 0x1c03_c163),
        CPUIDEntry(function: 7, index: 0, flags: 1, ebx: 0xf3bf_bfff, ecx: 0x1bc1_7f5e, edx: 0xffc1_0410),
        CPUIDEntry(function: 0xb, index: 0, flags: 1, eax: 1, ebx: 2, ecx: 0x100, edx: 7),
        CPUIDEntry(function: 0xb, index: 1, flags: 1, eax: 7, ebx: 112, ecx: 0x201, edx: 7),
        CPUIDEntry(function: 0xb, index: 2, flags: 1, eax: 0, ebx: 0, ecx: 2, edx: 7),
        CPUIDEntry(function: 0xd, index: 0, flags: 1, eax: 0x2e7, ebx: 0xa88, ecx: 0x2b00, edx: 0),
        CPUIDEntry(function: 0xd, index: 1, flags: 1, eax: 0x1f),
        CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: word("KVMK"), ecx: word("VMKV"), edx: 0x4d),
        CPUIDEntry(function: 0x4000_0001, eax: 0x0103_ffff),
        CPUIDEntry(function: 0x8000_0001, ecx: 0x0000_0121, edx: 0x2c10_0800),
        CPUIDEntry(function: 0x8000_001f, eax: 0x1, ebx: 0x2f),
    ]

    func entry(_ list: [CPUIDEntry], _ f: UInt32, _ i: UInt32 = 0) throws -> CPUIDEntry {
        try #require(list.first { $0.function == f && $0.index == i })
    }

    @Test func topologyForEveryTemplate() throws {
        for template in [CPUTemplate.host, .pvmSafe] {
            let out = CPUID.normalize(Self.host, cpuIndex: 5, cpuCount: 8, template: template)
            #expect(out.count == Self.host.count)
            let l1 = try entry(out, 1)
            #expect(l1.ebx >> 24 == 5)
            #expect((l1.ebx >> 16) & 0xff == 8)
            #expect((l1.ebx >> 8) & 0xff == 8)
            #expect(l1.ecx & (1 << 31) != 0)
            #expect(l1.edx & (1 << 28) != 0)
            let b0 = try entry(out, 0xb, 0), b1 = try entry(out, 0xb, 1), b2 = try entry(out, 0xb, 2)
            #expect(b0.edx == 5 && b1.edx == 5 && b2.edx == 5)
            #expect(b0.ebx == 1 && b0.ecx == 0x100 && b0.eax == 0)
            #expect(b1.ebx == 8 && b1.ecx == 0x201 && b1.eax == 3)
            #expect(b2.eax == 0 && b2.ebx == 0 && b2.ecx == 2)
            let l4 = try entry(out, 4, 0), l4c3 = try entry(out, 4, 3)
            #expect(l4.eax >> 26 == 7)
            #expect((l4.eax >> 14) & 0xfff == 0)
            #expect((l4c3.eax >> 14) & 0xfff == 7)
            #expect(l4.eax & 0x3fff == 0x0121)
        }
        let single = CPUID.normalize(Self.host, cpuIndex: 0, cpuCount: 1, template: .host)
        #expect(try entry(single, 1).edx & (1 << 28) == 0)
        #expect(try entry(single, 0xb, 1).eax == 0)
    }

    @Test func hostTemplateKeepsFeatures() throws {
        let out = CPUID.normalize(Self.host, cpuIndex: 0, cpuCount: 2, template: .host)
        #expect(try entry(out, 1).ecx & (1 << 26) != 0)   // XSAVE
        #expect(try entry(out, 0xd, 0) == entry(Self.host, 0xd, 0))
        #expect(try entry(out, 0x4000_0001).eax == 0x0103_ffff)
        #expect(try entry(out, 7) == entry(Self.host, 7))
    }

    @Test func pvmSafeClearsRiskyFeatures() throws {
        let out = CPUID.normalize(Self.host, cpuIndex: 1, cpuCount: 2, template: .pvmSafe)
        let l1 = try entry(out, 1)
        for bit: UInt32 in [3, 5, 6, 12, 15, 17, 23, 26, 27, 28, 29, 30] { #expect(l1.ecx & (1 << bit) == 0, "leaf 1 ECX bit \(bit)") }
        for bit: UInt32 in [21, 22, 24, 19, 20] {  // X2APIC, MOVBE, TSC_DEADLINE, SSE4.1/4.2 stay
            #expect(l1.ecx & (1 << bit) == Self.host[1].ecx & (1 << bit), "leaf 1 ECX bit \(bit)")
        }
        #expect(l1.edx == Self.host[1].edx | (1 << 28))
        let l7 = try entry(out, 7)
        for bit: UInt32 in [0, 4, 5, 9, 10, 11, 14, 16, 17, 18, 20, 21, 23, 24, 26, 27, 28, 30, 31] {
            #expect(l7.ebx & (1 << bit) == 0, "leaf 7 EBX bit \(bit)")
        }
        #expect(l7.ebx & (1 << 3 | 1 << 7 | 1 << 8 | 1 << 19 | 1 << 29) == Self.host[4].ebx & (1 << 3 | 1 << 7 | 1 << 8 | 1 << 19 | 1 << 29))
        for bit: UInt32 in [2, 3, 4, 5, 16, 22] { #expect(l7.ecx & (1 << bit) == 0, "leaf 7 ECX bit \(bit)") }
        #expect(l7.edx & (1 << 4) == 0)
        for e in out where e.function == 0xd || e.function == 0x8000_001f {
            #expect(e.eax == 0 && e.ebx == 0 && e.ecx == 0 && e.edx == 0)
        }
        #expect(try entry(out, 0x4000_0001).eax == (1 << 0 | 1 << 1 | 1 << 3 | 1 << 24))
        #expect(try entry(out, 0x4000_0000) == entry(Self.host, 0x4000_0000))
        let ext = try entry(out, 0x8000_0001)
        #expect(ext.ecx & (1 << 5) == 0 && ext.ecx & 1 == 1)
        #expect(ext.edx & (1 << 27) == 0 && ext.edx & (1 << 26) != 0)  // RDTSCP off, PDPE1GB kept
        // Every rule has a reason.
        #expect(CPUID.pvmSafeClears.allSatisfy { !$0.why.isEmpty && !$0.name.isEmpty && $0.bit < 32 })
    }

    @Test func vendorOverride() throws {
        let out = CPUID.normalize(Self.host, cpuIndex: 0, cpuCount: 1, template: .host, vendorOverride: "AuthenticAMD")
        #expect(CPUID.vendor(of: try entry(out, 0)) == "AuthenticAMD")
        #expect(CPUID.vendor(of: try entry(Self.host, 0)) == "GenuineIntel")
        let short = CPUID.normalize(Self.host, cpuIndex: 0, cpuCount: 1, template: .host, vendorOverride: "Swift")
        #expect(CPUID.vendor(of: try entry(short, 0)) == "Swift       ")
    }

    @Test func amdTopologyLeaves() throws {
        let amd: [CPUIDEntry] = [
            CPUIDEntry(function: 0, eax: 0x10, ebx: Self.word("Auth"), ecx: Self.word("cAMD"), edx: Self.word("enti")),
            CPUIDEntry(function: 0x8000_0008, eax: 0x3030, ecx: 0x7007),
            CPUIDEntry(function: 0x8000_001e, eax: 9, ebx: 0x105, ecx: 0x300),
        ]
        let out = CPUID.normalize(amd, cpuIndex: 3, cpuCount: 4, template: .host)
        #expect(try entry(out, 0x8000_0008).ecx == 0x2003)
        let t = try entry(out, 0x8000_001e)
        #expect(t.eax == 3 && t.ebx == 3 && t.ecx == 0)
    }

    @Test func bootMSRs() {
        let m = Dictionary(uniqueKeysWithValues: MSR.bootEntries.map { ($0.index, $0.value) })
        #expect(m[0x1a0] == 1)
        #expect(m[0x2ff] == 0x806)
        #expect(m[0x10] == 0)
        for index: UInt32 in [0x174, 0x175, 0x176, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102] {
            #expect(m[index] == 0)
        }
        #expect(MSR.bootEntries.count == 11)
    }
}
