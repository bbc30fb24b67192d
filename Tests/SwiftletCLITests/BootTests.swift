import Glibc
import Testing
import SwiftletTestSupport

/// Real boots of the project's own kernel and initramfs. Each takes a minute
/// or more where the guest kernel is emulated (nested PVM), so there are
/// few, and each checks a lot.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct BootTests {
    static var isPVM: Bool { access("/sys/module/kvm_pvm", F_OK) == 0 }

    @Test("bzImage, decompressed on the host: the kernel boots to init, init runs and powers off, the VMM exits 0")
    func bootsToInit() throws {
        try #require(Images.present, "run `make images` first")
        let r = try CLI.run(["boot", "--boot-timer", "--stats", "--timeout", "900"])
        // The kernel came up through the whole machine model.
        #expect(r.stdout.contains("Linux version 6.1"))
        #expect(r.stdout.contains("Hypervisor detected: KVM"))
        #expect(r.stdout.contains("found SMP MP-table"))
        #expect(r.stdout.contains("ttyS0 at I/O 0x3f8 (irq = 4"))
        #expect(r.stdout.contains("Run /sbin/init as init process"))
        #expect(r.stderr.contains("vmm-first-kvm-run-us="))
        // User space ran: init wrote the boot timer, printed, and powered off.
        #expect(r.stdout.contains("swiftlet-init: reached userspace"))
        #expect(r.stdout.contains("swiftlet-init: kernel 6.1"))
        #expect(r.stdout.contains("swiftlet-init: powering off"))
        #expect(r.stderr.contains("guest-boot-time-us="))
        #expect(r.stderr.contains("swiftlet: guest powered off"))
        #expect(r.status == 0)
        if Self.isPVM {
            // The nested-PVM handling was applied: CPU features hidden through the
            // command line, and the kernel's INT3 self-test completed by the VMM.
            #expect(r.stdout.contains("Clearing CPUID bits"))
            #expect(r.stderr.contains("fixup-int3="))
        }
    }

    @Test("ELF vmlinux with two vCPUs: the AP is started through the MP table, and both halt at power-off")
    func bootsELFWithTwoCPUs() throws {
        try #require(Images.present, "run `make images` first")
        let r = try CLI.run(["boot", "--kernel", Images.vmlinux, "--cpus", "2", "--timeout", "900"])
        #expect(r.stdout.contains("Processors: 2"))
        #expect(r.stdout.contains("smp: Brought up 1 node, 2 CPUs"))
        #expect(r.stdout.contains("swiftlet-init: powering off"))
        #expect(r.stderr.contains("swiftlet: guest powered off"))
        #expect(r.status == 0)
    }
}
