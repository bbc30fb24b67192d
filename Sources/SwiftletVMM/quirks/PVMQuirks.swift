import SwiftletX86

/// What Swiftlet adds to a Linux guest's command line on a nested PVM host.
/// On hardware KVM it adds nothing.
enum PVMQuirks {
    /// Enables the guest-kernel patch that completes a user-mode SYSCALL
    /// which PVM leaves at CPL3 (kernels/patches/0001). A kernel without the
    /// patch ignores it (it reaches init as an argument, which init ignores).
    static let syscallArgument = "swiftlet_pvm_syscall"

    /// The guest keeps time with kvmclock rather than the TSC. Nested PVM
    /// cannot offset the guest's TSC (guest code reads the host's natively),
    /// so a guest restored from a snapshot would see its TSC clock jump by
    /// the snapshot's age, and RCU would report stalls. kvmclock is restored
    /// with KVM_SET_CLOCK, and goes on from where the snapshot left it.
    static let clocksourceArgument = "clocksource=kvm-clock"

    static func kernelArguments(isPVMHost: Bool, template: CPUTemplate) -> [String] {
        guard isPVMHost else { return [] }
        // The guest's standard CPUID leaves bypass KVM_SET_CPUID2 there, so
        // the pvm-safe template also goes to the kernel as noxsave/clearcpuid=.
        let cpu = template == .pvmSafe ? KernelCPUMask.kernelArguments() : []
        return cpu + [syscallArgument, clocksourceArgument]
    }
}
