import Glibc
import Testing

/// Real boots of the project's own kernel and initramfs. Each takes a minute
/// or more where the guest kernel is emulated (nested PVM), so there are
/// few, and each checks a lot.
@Suite(.enabled(if: KVMGate.enabled, KVMGate.skipMessage), .serialized)
struct BootTests {
    static var isPVM: Bool { access("/sys/module/kvm_pvm", F_OK) == 0 }

    @Test("bzImage, decompressed on the host: the kernel boots to init, and the VMM ends promptly with the right status")
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
        if Self.isPVM {
            // Nested PVM: user space cannot enter the kernel (see kernels/README.md),
            // so init dies on its first system call, the kernel panics, and the
            // VMM must report a crash, not a clean exit.
            #expect(r.stdout.contains("Attempted to kill init"))
            #expect(r.stderr.contains("guest kernel panicked"))
            #expect(r.status == 2)
        } else {
            #expect(r.stdout.contains("swiftlet-init: reached userspace"))
            #expect(r.stdout.contains("swiftlet-init: powering off"))
            #expect(r.stderr.contains("guest-boot-time-us="))
            #expect(r.stderr.contains("guest powered off"))
            #expect(r.status == 0)
        }
    }
}
