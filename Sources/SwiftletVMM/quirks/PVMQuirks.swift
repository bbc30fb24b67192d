import SwiftletX86

/// What Swiftlet adds to a Linux guest's command line on a nested PVM host.
/// On hardware KVM it adds nothing.
enum PVMQuirks {
    /// Enables the guest-kernel patch that completes a user-mode SYSCALL
    /// which PVM leaves at CPL3 (kernels/patches/0001). A kernel without the
    /// patch ignores it (it reaches init as an argument, which init ignores).
    static let syscallArgument = "swiftlet_pvm_syscall"

    static func kernelArguments(isPVMHost: Bool, template: CPUTemplate) -> [String] {
        guard isPVMHost else { return [] }
        // The guest's standard CPUID leaves bypass KVM_SET_CPUID2 there, so
        // the pvm-safe template also goes to the kernel as noxsave/clearcpuid=.
        let cpu = template == .pvmSafe ? KernelCPUMask.kernelArguments() : []
        return cpu + [syscallArgument]
    }
}
