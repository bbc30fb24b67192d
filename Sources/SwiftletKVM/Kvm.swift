import CSwiftlet
import Glibc
import SwiftletSys

/// The KVM subsystem: an open `/dev/kvm`.
///
/// Checks the API version and the capabilities Swiftlet needs once, at open.
public final class Kvm: Sendable {
    private let handle: OwnedFD
    /// The `/dev/kvm` descriptor, valid while `self` lives.
    public var fd: Int32 { handle.raw }
    /// Size of each vCPU's shared `kvm_run` mapping.
    public let vcpuMmapSize: Int

    /// Capabilities every Swiftlet VM needs.
    public static let requiredCapabilities: [(String, Int32)] = [
        ("KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY),
        ("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP),
        ("KVM_CAP_PIT2", KVM_CAP_PIT2),
        ("KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR),
        ("KVM_CAP_SET_IDENTITY_MAP_ADDR", KVM_CAP_SET_IDENTITY_MAP_ADDR),
        ("KVM_CAP_EXT_CPUID", KVM_CAP_EXT_CPUID),
        ("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT),
        ("KVM_CAP_IOEVENTFD", KVM_CAP_IOEVENTFD),
        ("KVM_CAP_IRQFD", KVM_CAP_IRQFD),
        ("KVM_CAP_MP_STATE", KVM_CAP_MP_STATE),
        ("KVM_CAP_VCPU_EVENTS", KVM_CAP_VCPU_EVENTS),
    ]

    /// Opens `path` (normally `/dev/kvm`) and checks the API and capabilities.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let handle: OwnedFD
        do {
            handle = try OwnedFD(opening: path, flags: O_RDWR)
        } catch {
            throw .unavailable(path: path, error)
        }
        let fd = handle.raw
        let version = ioctl(fd, SWL_KVM_GET_API_VERSION)
        guard version == 12 else { throw .apiVersion(version) }
        for (name, cap) in Kvm.requiredCapabilities where ioctl(fd, SWL_KVM_CHECK_EXTENSION, cap) <= 0 {
            throw .missingCapability(name)
        }
        let size = ioctl(fd, SWL_KVM_GET_VCPU_MMAP_SIZE)
        guard size > 0 else { throw .system(.last("ioctl(KVM_GET_VCPU_MMAP_SIZE)")) }
        vcpuMmapSize = Int(size)
        self.handle = handle
    }

    /// The value KVM reports for a capability (0 when absent).
    public func checkExtension(_ cap: Int32) -> Int32 {
        max(0, ioctl(fd, SWL_KVM_CHECK_EXTENSION, cap))
    }

    /// The most vCPUs KVM recommends for one VM.
    public var recommendedVcpus: Int { Int(checkExtension(KVM_CAP_NR_VCPUS)) }
    /// The most vCPUs KVM allows for one VM.
    public var maxVcpus: Int { Int(checkExtension(KVM_CAP_MAX_VCPUS)) }

    /// The CPUID leaves this KVM can expose, before Swiftlet filters them.
    public func supportedCPUID() throws(KVMError) -> [kvm_cpuid_entry2] {
        var buf = swl_cpuid()
        buf.nent = UInt32(SWL_MAX_CPUID_ENTRIES)
        _ = try kvmIoctl(fd, SWL_KVM_GET_SUPPORTED_CPUID, &buf, "KVM_GET_SUPPORTED_CPUID")
        // SAFETY: `nent` was capped at the buffer's size by KVM; the entries are copied out.
        return unsafe withUnsafeBytes(of: &buf.entries) { raw in
            unsafe Array(raw.bindMemory(to: kvm_cpuid_entry2.self).prefix(Int(buf.nent)))
        }
    }

    /// The MSR indices KVM saves and restores.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var buf = swl_msr_list()
        buf.nmsrs = UInt32(SWL_MAX_MSR_INDICES)
        _ = try kvmIoctl(fd, SWL_KVM_GET_MSR_INDEX_LIST, &buf, "KVM_GET_MSR_INDEX_LIST")
        // SAFETY: `nmsrs` was capped at the buffer's size by KVM; the indices are copied out.
        return unsafe withUnsafeBytes(of: &buf.indices) { raw in
            unsafe Array(raw.bindMemory(to: UInt32.self).prefix(Int(buf.nmsrs)))
        }
    }

    /// Creates an empty VM.
    public func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = try kvmIoctl(fd, SWL_KVM_CREATE_VM, value: 0, "KVM_CREATE_VM")
        return VirtualMachine(handle: OwnedFD(taking: vmfd), kvm: self)
    }
}

/// Facts about the KVM on this host that change how a guest must be run.
public enum HostKVM {
    /// True when KVM is the nested "PVM" flavour (`/sys/module/kvm_pvm`), where
    /// guest ring-0 code runs through KVM's instruction emulator.
    public static var isPVM: Bool {
        // SAFETY: a constant path; nothing is read.
        unsafe access("/sys/module/kvm_pvm", F_OK) == 0
    }
}
