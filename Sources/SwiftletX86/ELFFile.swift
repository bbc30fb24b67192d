import Glibc
import SwiftletMemory
import SwiftletSys

extension ELFLoader {
    /// Loads the ELF file at `path` into guest memory, mapping rather than copying.
    ///
    /// Each PT_LOAD whose file offset and physical address are page-aligned
    /// (as in every vmlinux) is mapped `MAP_PRIVATE | MAP_FIXED` over its
    /// guest range: pages come from the page cache on first touch, are shared
    /// by every VM booting the same kernel, and become private only when the
    /// guest writes them. Other segments are copied. Validation is the same
    /// as for `load(_:into:)`, and happens before any guest memory changes.
    public static func load(fileAt path: String, into memory: GuestMemory) throws(X86BootError) -> LoadedKernel {
        let fd: OwnedFD
        do { fd = try OwnedFD(opening: path, flags: O_RDONLY) } catch { throw .io(error) }
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw .io(.last("fstat(\(path))")) }
        let size = Int(st.st_size)
        guard size > 0 else { throw .invalidELF("\(path) is empty") }
        guard let view = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd.raw, 0), view != MAP_FAILED else {
            throw .io(.last("mmap(\(path))"))
        }
        defer { munmap(view, size) }
        let elf = UnsafeRawBufferPointer(start: view, count: size)
        let (entry, segments) = try segments(elf, memory: memory)
        let lowest = segments.map(\.paddr).min() ?? 0
        let highest = segments.map { $0.paddr + $0.memsz }.max() ?? 0
        guard entry >= lowest, entry < highest else {
            throw .invalidELF("entry point 0x\(String(entry, radix: 16)) is outside the loaded segments")
        }
        let page: UInt64 = 4096
        for s in segments {
            do {
                let dst = try memory.slice(at: s.paddr, count: Int(s.memsz))
                let mappable = s.offset % page == 0 && s.paddr % page == 0 && s.filesz >= page
                var copied: UInt64 = 0
                if mappable {
                    // Map the whole pages of file data; the partial last page is copied.
                    let whole = s.filesz & ~(page - 1)
                    let p = mmap(dst.baseAddress, Int(whole), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd.raw, off_t(s.offset))
                    guard p == dst.baseAddress else { throw X86BootError.io(.last("mmap(\(path) segment)")) }
                    copied = whole
                }
                let rest = UnsafeRawBufferPointer(rebasing: elf[Int(s.offset + copied)..<Int(s.offset + s.filesz)])
                try memory.write(rest, at: s.paddr + copied)
                try memory.fill(0, at: s.paddr + s.filesz, count: Int(s.memsz - s.filesz))
            } catch let e as GuestMemoryError {
                throw .memory(e)
            } catch let e as X86BootError {
                throw e
            } catch {
                throw .invalidELF("\(error)")
            }
        }
        return LoadedKernel(entry: entry, lowestAddress: lowest, highestAddress: highest)
    }
}
