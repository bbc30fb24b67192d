import Glibc
import Testing
@_spi(Testing) @testable import SwiftletX86

@Suite struct KernelCacheTests {
    @Test func missThenHit() throws {
        let dir = Fixtures.tempDirectory()
        defer { Fixtures.removeTree(dir) }
        let elf = Fixtures.smallKernel()
        let image = Fixtures.bzImage(payload: Decompressor.compressForTesting(elf, as: .zstd))
        let path = dir + "/bzImage"
        Fixtures.writeFile(path, image)
        let cache = KernelCache(directory: dir + "/cache")

        // Miss: decompressed and stored under the content hash.
        let first = try cache.vmlinux(forImageAt: path)
        #expect(first.elf == elf)
        #expect(first.setupHeader?.version == 0x020f)
        let hash = SHA256.hex(SHA256.hash(image))
        let cached = cache.elfPath(hash)
        #expect(Fixtures.readFile(cached) == elf)

        // Hit: the cached file is what comes back (marker proves no re-decompression).
        var marked = elf
        marked[marked.count - 1] ^= 0xff
        Fixtures.writeFile(cached, marked)
        let second = try cache.vmlinux(forImageAt: path)
        #expect(second.elf == marked)
        #expect(second.setupHeader == first.setupHeader)

        // Same content at another path: found by hash, not decompressed again.
        let copy = dir + "/copy"
        Fixtures.writeFile(copy, image)
        #expect(try cache.vmlinux(forImageAt: copy).elf == marked)

        // Changed content: a miss again.
        let elf2 = Fixtures.elf(entry: 0x100_0000, segments: [.init(paddr: 0x100_0000, data: [1, 2, 3], memsz: 16)])
        let image2 = Fixtures.bzImage(payload: Decompressor.compressForTesting(elf2, as: .lz4Legacy))
        Fixtures.writeFile(path + ".new", image2)
        rename(path + ".new", path)
        #expect(try cache.vmlinux(forImageAt: path).elf == elf2)
        #expect(Fixtures.exists(cache.elfPath(SHA256.hex(SHA256.hash(image2)))))
    }

    @Test func unwritableCacheStillBoots() throws {
        let dir = Fixtures.tempDirectory()
        defer { Fixtures.removeTree(dir) }
        let elf = Fixtures.smallKernel()
        let path = dir + "/bzImage"
        Fixtures.writeFile(path, Fixtures.bzImage(payload: Decompressor.compressForTesting(elf, as: .gzip)))
        // A regular file where the cache directory should be: mkdir fails even as root.
        Fixtures.writeFile(dir + "/notadir", [1])
        let cache = KernelCache(directory: dir + "/notadir/cache")
        #expect(try cache.vmlinux(forImageAt: path).elf == elf)
        #expect(try cache.vmlinux(forImageAt: path).elf == elf)
    }

    @Test func elfPassesThroughUncached() throws {
        let dir = Fixtures.tempDirectory()
        defer { Fixtures.removeTree(dir) }
        let elf = Fixtures.smallKernel()
        Fixtures.writeFile(dir + "/vmlinux", elf)
        let cache = KernelCache(directory: dir + "/cache")
        let r = try cache.vmlinux(forImageAt: dir + "/vmlinux")
        #expect(r.elf == elf && r.setupHeader == nil)
        #expect(!Fixtures.exists(dir + "/cache"))
    }

    @Test func relativeCacheDirectory() throws {
        let dir = Fixtures.tempDirectory()
        defer { Fixtures.removeTree(dir) }
        let elf = Fixtures.smallKernel()
        Fixtures.writeFile(dir + "/bzImage", Fixtures.bzImage(payload: Decompressor.compressForTesting(elf, as: .gzip)))
        var old = [CChar](repeating: 0, count: 4096)
        _ = getcwd(&old, old.count)
        chdir(dir)
        defer { _ = old.withUnsafeBufferPointer { chdir($0.baseAddress!) } }
        let cache = KernelCache(directory: "rel/cache")
        #expect(try cache.vmlinux(forImageAt: "bzImage").elf == elf)
        #expect(Fixtures.exists(dir + "/rel/cache/vmlinux"))
    }

    @Test func missingFileIsAnIOError() {
        let cache = KernelCache(directory: "/tmp/swiftlet-x86-unused")
        #expect(throws: X86BootError.self) { try cache.vmlinux(forImageAt: "/nonexistent/bzImage") }
    }
}
