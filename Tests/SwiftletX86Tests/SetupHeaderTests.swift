import Testing
@_spi(Testing) @testable import SwiftletX86

@Suite struct SetupHeaderTests {
    let payload = Fixtures.data(count: 300)

    @Test func parsesValidHeader() throws {
        let image = Fixtures.bzImage(payload: payload)
        let h = try SetupHeader.parse(image)
        #expect(h.version == 0x020f)
        #expect(h.setupSects == 4)
        #expect(h.protectedModeOffset == 5 * 512)
        #expect(h.xloadflags & SetupHeader.xlfKernel64 != 0)
        #expect(h.cmdlineSize == 2047)
        #expect(h.initrdAddrMax == 0x7fff_ffff)
        #expect(h.kernelAlignment == 0x200000)
        #expect(h.relocatableKernel)
        #expect(h.prefAddress == 0x100_0000)
        #expect(h.initSize == 0x200_0000)
        #expect(h.headerEnd == 0x202 + 0x6a)
        #expect(h.rawHeader.count == 0x26c - 0x1f1)
        #expect(Array(image[h.payloadRange]) == payload)
    }

    @Test func zeroSetupSectsMeansFour() throws {
        let h = try SetupHeader.parse(Fixtures.bzImage(payload: payload, setupSects: 0))
        #expect(h.setupSects == 4)
    }

    @Test func rawHeaderIsCutBeforeTheE820Table() throws {
        let h = try SetupHeader.parse(Fixtures.bzImage(payload: payload, jumpByte: 0xff))
        #expect(h.headerEnd == 0x301)
        #expect(h.rawHeader.count == 0x290 - 0x1f1)
    }

    @Test func truncatedAtManyLengths() {
        let image = Fixtures.bzImage(payload: payload)
        for length in [1, 0x100, 0x1ff, 0x200, 0x204, 0x208, 0x250, 0x26b, 0x400, 5 * 512, image.count - 70] {
            #expect(throws: X86BootError.self) { try SetupHeader.parse(Array(image[0..<length])) }
        }
        // Cut after the signature: reported as truncated, not as "not a kernel".
        do {
            _ = try SetupHeader.parse(Array(image[0..<0x250]))
            Issue.record("parsed a truncated header")
        } catch {
            guard case .truncatedImage = error else { Issue.record("got \(error)"); return }
        }
        // A prefix parses when the full length is given.
        #expect((try? SetupHeader.parse(Array(image[0..<0x400]), fileLength: image.count)) != nil)
    }

    @Test func badMagic() {
        var image = Fixtures.bzImage(payload: payload)
        image[0x1fe] = 0
        #expect(throws: X86BootError.notAKernelImage) { try SetupHeader.parse(image) }
        image = Fixtures.bzImage(payload: payload)
        image[0x202] = UInt8(ascii: "X")
        #expect(throws: X86BootError.notAKernelImage) { try SetupHeader.parse(image) }
        #expect(throws: X86BootError.notAKernelImage) { try SetupHeader.parse([UInt8]()) }
    }

    @Test func oldProtocol() {
        let image = Fixtures.bzImage(payload: payload, version: 0x020b)
        #expect(throws: X86BootError.protocolTooOld(major: 2, minor: 11)) { try SetupHeader.parse(image) }
        #expect(X86BootError.protocolTooOld(major: 2, minor: 11).description == "boot protocol 2.11 too old, need 2.12")
        #expect(X86BootError.protocolTooOld(major: 2, minor: 2).description == "boot protocol 2.02 too old, need 2.12")
    }

    @Test func no64BitEntry() {
        let image = Fixtures.bzImage(payload: payload, xloadflags: 0x2)
        #expect(throws: X86BootError.not64Bit) { try SetupHeader.parse(image) }
    }

    @Test func payloadOutOfRange() {
        for (offset, length) in [(UInt32(0x200), UInt32(10_000)), (0xffff_ff00, 300), (0x200, 0xffff_ffff), (0x200, 0)] {
            let image = Fixtures.bzImage(payload: payload, payloadOffset: 0x200, payloadLength: length)
            var patched = image
            Fixtures.put(offset, at: 0x248, in: &patched)
            #expect(throws: X86BootError.self) { try SetupHeader.parse(patched) }
        }
    }

    @Test func kernelImageDetectsFormats() throws {
        let elf = Fixtures.smallKernel()
        #expect(try KernelImage.parse(elf).format == .elf)
        #expect(try KernelImage.parse(elf).vmlinux() == elf)

        let gz = Decompressor.compressForTesting(elf, as: .gzip)
        let image = try KernelImage.parse(Fixtures.bzImage(payload: gz))
        guard case let .bzImage(header, kind) = image.format else { Issue.record("not a bzImage"); return }
        #expect(kind == .gzip)
        #expect(header.version == 0x020f)
        #expect(try image.vmlinux() == elf)

        let xz: [UInt8] = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2, 3, 4]
        #expect(throws: X86BootError.unsupportedCompression("xz")) {
            try KernelImage.parse(Fixtures.bzImage(payload: xz))
        }
        #expect(throws: X86BootError.notAKernelImage) { try KernelImage.parse(Array("hello, world".utf8)) }
    }
}
