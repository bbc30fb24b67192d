import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSys
import Synchronization

/// A KVM virtual machine: its memory slots, in-kernel irqchip and PIT, and vCPUs.
public final class VirtualMachine: Sendable {
    private let handle: OwnedFD
    /// The VM descriptor, valid while `self` lives.
    public var fd: Int32 { handle.raw }
    /// The KVM system this VM belongs to.
    public let kvm: Kvm
    /// The next free memory slot number.
    private let nextSlot = Mutex<UInt32>(0)

    init(handle: consuming OwnedFD, kvm: Kvm) {
        self.handle = handle
        self.kvm = kvm
    }

    /// Sets the three-page region KVM needs for the TSS on Intel hosts.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        // SAFETY: KVM_SET_TSS_ADDR takes the address as the argument itself; nothing is dereferenced.
        _ = unsafe try kvmIoctl(fd, SWL_KVM_SET_TSS_ADDR, UnsafeMutableRawPointer(bitPattern: UInt(address))!, "KVM_SET_TSS_ADDR")
    }

    /// Sets the page KVM uses for the real-mode identity map on Intel hosts.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        var addr = address
        _ = try kvmIoctl(fd, SWL_KVM_SET_IDENTITY_MAP_ADDR, &addr, "KVM_SET_IDENTITY_MAP_ADDR")
    }

    /// Creates the in-kernel PIC pair and IOAPIC (and per-vCPU LAPICs).
    public func createIRQChip() throws(KVMError) {
        _ = try kvmIoctl(fd, SWL_KVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP")
    }

    /// Creates the in-kernel i8254 PIT. Its speaker port (0x61) is handled in-kernel too.
    public func createPIT() throws(KVMError) {
        var cfg = kvm_pit_config()
        cfg.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        _ = try kvmIoctl(fd, SWL_KVM_CREATE_PIT2, &cfg, "KVM_CREATE_PIT2")
    }

    /// Registers every region of `memory` as a KVM memory slot.
    public func mapMemory(_ memory: GuestMemory) throws(KVMError) {
        for region in memory.regions {
            var slot = kvm_userspace_memory_region()
            slot.slot = nextSlot.withLock { n in defer { n += 1 }; return n }
            slot.guest_phys_addr = region.guestBase
            slot.memory_size = UInt64(region.size)
            // SAFETY: the region's mapping outlives the VM's use of it (GuestMemory is kept by the machine).
            slot.userspace_addr = unsafe UInt64(UInt(bitPattern: region.host))
            _ = try kvmIoctl(fd, SWL_KVM_SET_USER_MEMORY_REGION, &slot, "KVM_SET_USER_MEMORY_REGION")
        }
    }

    /// Drives an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        _ = try kvmIoctl(fd, SWL_KVM_IRQ_LINE, &line, "KVM_IRQ_LINE")
    }

    /// Pulses an edge-triggered interrupt line (high, then low).
    public func pulseIRQ(_ irq: UInt32) throws(KVMError) {
        try setIRQLine(irq, level: true)
        try setIRQLine(irq, level: false)
    }

    /// Routes writes of `eventfd` into `gsi` (an irqfd).
    public func registerIRQFD(_ eventfd: Int32, gsi: UInt32) throws(KVMError) {
        var req = kvm_irqfd()
        req.fd = UInt32(bitPattern: eventfd)
        req.gsi = gsi
        _ = try kvmIoctl(fd, SWL_KVM_IRQFD, &req, "KVM_IRQFD")
    }

    /// Signals `eventfd` when the guest writes `length` bytes at MMIO `address`
    /// (optionally only when the value written is `datamatch`).
    public func registerIOEventFD(_ eventfd: Int32, mmioAddress: UInt64, length: UInt32, datamatch: UInt64? = nil) throws(KVMError) {
        var req = kvm_ioeventfd()
        req.addr = mmioAddress
        req.len = length
        req.fd = eventfd
        if let d = datamatch {
            req.datamatch = d
            req.flags |= SWL_KVM_IOEVENTFD_FLAG_DATAMATCH
        }
        _ = try kvmIoctl(fd, SWL_KVM_IOEVENTFD, &req, "KVM_IOEVENTFD")
    }

    /// Creates vCPU `id`, with its `kvm_run` area mapped.
    public func createVcpu(id: Int) throws(KVMError) -> Vcpu {
        let vcpu = OwnedFD(taking: try kvmIoctl(fd, SWL_KVM_CREATE_VCPU, value: Int32(id), "KVM_CREATE_VCPU"))
        let size = kvm.vcpuMmapSize
        // SAFETY: the vCPU's kvm_run area, of the size KVM gave; checked against MAP_FAILED.
        let p = unsafe mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu.raw, 0)
        guard let p = unsafe p, unsafe p != MAP_FAILED else { throw .system(.last("mmap(kvm_run)")) }
        return unsafe Vcpu(id: id, handle: vcpu, run: p, runSize: size)
    }
}
