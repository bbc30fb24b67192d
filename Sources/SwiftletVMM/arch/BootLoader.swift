import Glibc
import SwiftletMemory
import SwiftletSys
import SwiftletX86

/// Loads the kernel, initrd and boot structures into guest memory for the
/// Linux 64-bit boot protocol.
enum BootLoader {
    struct Loaded {
        let entry: UInt64
        let longMode: Bool
    }

    /// - Parameter extraArguments: appended to a Linux command line (the machine's own needs).
    static func load(config: MachineConfig, memory: GuestMemory, extraArguments: [String]) throws(VMMError) -> Loaded {
        switch config.payload {
        case let .linux(kernelPath, initrdPath, cmdline):
            let full = KernelCommandLine.inserting(extraArguments, into: cmdline)
            return try loadLinux(kernelPath: kernelPath, initrdPath: initrdPath, cmdline: full, config: config, memory: memory)
        case let .flat(code, loadAddress, longMode):
            do throws(GuestMemoryError) { try memory.write(code, at: loadAddress) } catch { throw .memory(error) }
            if longMode {
                do throws(X86BootError) {
                    try GDT.write(into: memory)
                    _ = try PageTables.write(into: memory)
                } catch {
                    throw .boot(error)
                }
            }
            return Loaded(entry: loadAddress, longMode: longMode)
        }
    }

    static func loadLinux(kernelPath: String, initrdPath: String?, cmdline: String, config: MachineConfig, memory: GuestMemory) throws(VMMError) -> Loaded {
        do throws(X86BootError) {
            let cache = KernelCache(directory: config.kernelCacheDirectory ?? "")
            let (source, header) = try cache.vmlinuxSource(forImageAt: kernelPath)
            let kernel: LoadedKernel
            switch source {
            case let .file(path): kernel = try ELFLoader.load(fileAt: path, into: memory)
            case let .bytes(elf): kernel = try ELFLoader.load(elf, into: memory)
            }

            var initrd: (address: UInt64, size: Int)?
            if let path = initrdPath {
                initrd = try Initrd.load(fileAt: path, into: memory, header: header, kernelEnd: kernel.highestAddress)
            }

            let cmdlineArea = try ZeroPage.writeCommandLine(cmdline, header: header, into: memory)
            let e820 = E820.layout(ram: memory.regions.map { (base: $0.guestBase, size: $0.size) })
            try ZeroPage.write(into: memory, header: header, commandLine: cmdlineArea, initrd: initrd, e820: e820)
            try GDT.write(into: memory)
            _ = try PageTables.write(into: memory)
            try MPTable.write(into: memory, cpuCount: config.vcpuCount)
            return Loaded(entry: kernel.entry, longMode: true)
        } catch {
            throw .boot(error)
        }
    }
}

/// The kernel command line as Swiftlet composes it.
enum KernelCommandLine {
    /// Adds the machine's own arguments to `cmdline`, before a `--` word if
    /// there is one: what follows `--` is init's argv, not the kernel's.
    static func inserting(_ extra: [String], into cmdline: String) -> String {
        guard !extra.isEmpty else { return cmdline }
        let words = cmdline.split(separator: " ", omittingEmptySubsequences: false)
        if let dashes = words.firstIndex(of: "--") {
            // Cut at the word itself (its space before it goes), so the
            // spacing on either side stays as it was.
            let at = words[dashes].startIndex
            let kernel = String(cmdline[..<at].dropLast(dashes > 0 ? 1 : 0))
            let initArgs = String(cmdline[at...])
            return joining(([kernel] + extra + [initArgs]).filter { !$0.isEmpty })
        }
        return joining(([cmdline] + extra).filter { !$0.isEmpty })
    }

    /// `words` separated by single spaces. Not the standard library's
    /// `joined(separator:)`: that generic resolves an associated type at run
    /// time, and the first such look-up scans every protocol conformance in
    /// the binary (170k instructions, and a page of nearly every module's
    /// metadata) on the start-up path (issue 19).
    static func joining(_ words: [String]) -> String {
        var line = ""
        for (i, word) in words.enumerated() {
            if i > 0 { line += " " }
            line += word
        }
        return line
    }
}
