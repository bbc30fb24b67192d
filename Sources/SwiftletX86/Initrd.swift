import Glibc
import SwiftletMemory
import SwiftletSys

/// Placement of the initial ramdisk.
///
/// Like most boot loaders we put it as high as the kernel allows: out of the
/// way of the kernel's early allocations, which grow up from the image end.
public enum Initrd {
    /// The page-aligned guest address for an initrd of `size` bytes: the
    /// highest one such that it ends at or below both the kernel's
    /// initrd_addr_max (inclusive limit; 0x37ffffff without a header) and the
    /// end of RAM below the MMIO gap, and starts at or after `kernelEnd`.
    public static func place(size: Int, header: SetupHeader?, lowRAMEnd: UInt64, kernelEnd: UInt64) throws(X86BootError) -> UInt64 {
        guard size >= 0 else { throw .initrdDoesNotFit(size: size) }
        let addrMax = UInt64(header?.initrdAddrMax ?? SetupHeader.defaultInitrdAddrMax)
        let top = min(addrMax + 1, lowRAMEnd, Layout.mmioGapStart)
        guard UInt64(size) <= top else { throw .initrdDoesNotFit(size: size) }
        let address = (top - UInt64(size)) & ~(Layout.pageSize - 1)
        // Never below the kernel image nor in the legacy area under 1 MiB.
        guard let floor = alignUp(max(kernelEnd, Layout.highMemory), Layout.pageSize), address >= floor else {
            throw .initrdDoesNotFit(size: size)
        }
        return address
    }

    /// Places `initrd` (see `place`) and copies it into guest memory.
    /// Returns where it went, as `ZeroPage.build(initrd:)` takes it.
    public static func load(
        _ initrd: UnsafeRawBufferPointer, into memory: GuestMemory, header: SetupHeader?, kernelEnd: UInt64
    ) throws(X86BootError) -> (address: UInt64, size: Int) {
        let lowEnd = Layout.lowRAMEnd(memory.regions.map { (base: $0.guestBase, size: $0.size) })
        let address = try place(size: initrd.count, header: header, lowRAMEnd: lowEnd, kernelEnd: kernelEnd)
        do { try memory.write(initrd, at: address) } catch { throw .memory(error) }
        return (address, initrd.count)
    }

    /// Places and copies an initrd held in an array.
    public static func load(
        _ initrd: [UInt8], into memory: GuestMemory, header: SetupHeader?, kernelEnd: UInt64
    ) throws(X86BootError) -> (address: UInt64, size: Int) {
        try initrd.withBytes { (b) throws(X86BootError) in
            try load(b, into: memory, header: header, kernelEnd: kernelEnd)
        }
    }
}

extension Initrd {
    /// Places the initrd file at `path` and maps it into guest memory
    /// (`MAP_PRIVATE | MAP_FIXED`) instead of copying it: the guest reads it
    /// once while unpacking, straight from the page cache.
    public static func load(
        fileAt path: String, into memory: GuestMemory, header: SetupHeader?, kernelEnd: UInt64
    ) throws(X86BootError) -> (address: UInt64, size: Int) {
        let fd: OwnedFD
        do { fd = try OwnedFD(opening: path, flags: O_RDONLY) } catch { throw .io(error) }
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw .io(.last("fstat(\(path))")) }
        let size = Int(st.st_size)
        let lowEnd = Layout.lowRAMEnd(memory.regions.map { (base: $0.guestBase, size: $0.size) })
        let address = try place(size: size, header: header, lowRAMEnd: lowEnd, kernelEnd: kernelEnd)
        guard size > 0 else { return (address, 0) }
        let length = (size + Int(Layout.pageSize) - 1) & ~(Int(Layout.pageSize) - 1)
        let dst: UnsafeMutableRawBufferPointer
        do { dst = try memory.slice(at: address, count: length) } catch { throw .memory(error) }
        // The tail of the last page past EOF reads as zeros, as the kernel expects.
        let p = mmap(dst.baseAddress, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd.raw, 0)
        guard p == dst.baseAddress else { throw .io(.last("mmap(\(path))")) }
        return (address, size)
    }
}
