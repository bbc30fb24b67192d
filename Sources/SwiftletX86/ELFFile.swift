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
        /// The whole pages of file data that are mapped, not copied (0: none).
        func mappedLength(_ s: Segment) -> UInt64 {
            s.offset % page == 0 && s.paddr % page == 0 && s.filesz >= page ? s.filesz & ~(page - 1) : 0
        }
        // A .bss over a guest range the file is mapped over is written
        // (`fill`); elsewhere it is fresh guest memory and `zero` drops it.
        // Plain bounds, not an array of `Range<UInt64>`: that generic type's
        // metadata is made at run time, and its `Comparable` check scans
        // every protocol conformance in the binary (issue 19).
        func overlapsMapped(_ start: UInt64, _ end: UInt64) -> Bool {
            start < end && segments.contains { o in
                let length = mappedLength(o)
                return length > 0 && o.paddr < end && start < o.paddr + length
            }
        }
        for s in segments {
            do {
                let dst = try memory.slice(at: s.paddr, count: Int(s.memsz))
                var copied: UInt64 = 0
                let whole = mappedLength(s)
                if whole > 0 {
                    // Map the whole pages of file data; the partial last page is copied.
                    let p = mmap(dst.baseAddress, Int(whole), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd.raw, off_t(s.offset))
                    guard p == dst.baseAddress else { throw X86BootError.io(.last("mmap(\(path) segment)")) }
                    copied = whole
                }
                let rest = UnsafeRawBufferPointer(rebasing: elf[Int(s.offset + copied)..<Int(s.offset + s.filesz)])
                try memory.write(rest, at: s.paddr + copied)
                let (bssStart, bssEnd) = (s.paddr + s.filesz, s.paddr + s.memsz)
                if overlapsMapped(bssStart, bssEnd) {
                    try memory.fill(0, at: bssStart, count: Int(bssEnd - bssStart))
                } else {
                    try memory.zero(at: bssStart, count: Int(bssEnd - bssStart))
                }
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
