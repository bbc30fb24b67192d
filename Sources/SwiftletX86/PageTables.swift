import SwiftletMemory

/// The boot page tables: the first 4 GiB identity-mapped with 2 MiB pages.
///
/// The 64-bit entry runs with paging on, and the kernel's early code touches
/// itself, the zero page, the command line and the initrd by physical
/// address before it builds its own tables; 4 GiB covers all of them.
public enum PageTables {
    static let present: UInt64 = 1 << 0
    static let writable: UInt64 = 1 << 1
    /// PS: in a page-directory entry, map a 2 MiB page directly.
    static let pageSize: UInt64 = 1 << 7
    static let hugePage: UInt64 = 2 << 20
    static let entriesPerTable = 512

    /// The value of PML4 entry 0: the PDPT.
    public static var pml4Entry: UInt64 { Layout.pdpte | present | writable }
    /// The value of PDPT entry `i` (0..<4): the i-th page directory.
    public static func pdptEntry(_ i: Int) -> UInt64 { (Layout.pde + UInt64(i) * 0x1000) | present | writable }
    /// The value of page-directory entry `i` (counting across the four
    /// directories): 2 MiB page `i`, identity-mapped.
    public static func pdEntry(_ i: Int) -> UInt64 { UInt64(i) * hugePage | present | writable | pageSize }

    /// Writes PML4, PDPT and the four page directories at their `Layout`
    /// addresses and returns the value for CR3.
    @discardableResult
    public static func write(into memory: GuestMemory) throws(X86BootError) -> UInt64 {
        do {
            // Fresh guest memory is zero, but the tables may be rewritten on
            // reboot: write every entry, zeros included.
            try memory.fill(0, at: Layout.pml4, count: 0x1000)
            try memory.fill(0, at: Layout.pdpte, count: 0x1000)
            try memory.store(pml4Entry, at: Layout.pml4)
            for i in 0..<Layout.pdeCount {
                try memory.store(pdptEntry(i), at: Layout.pdpte + UInt64(i * 8))
            }
            var table = [UInt8](repeating: 0, count: Layout.pdeCount * entriesPerTable * 8)
            for i in 0..<(Layout.pdeCount * entriesPerTable) { table.putLE(pdEntry(i), at: i * 8) }
            try memory.write(table, at: Layout.pde)
        } catch {
            throw .memory(error)
        }
        return Layout.pml4
    }
}
