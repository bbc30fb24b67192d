// vCPU threads (`vcpuN`): run the guest and handle its port and MMIO exits
// (UART, i8042, boot timer, virtio-mmio registers). The base is `runtime`.
extension Allowlists {
    static let vcpu = """
    @runtime                               # glibc and Swift runtime basics
    ioctl KVM_RUN KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS KVM_GET_FPU KVM_SET_FPU KVM_GET_XSAVE KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS KVM_GET_MP_STATE KVM_IRQ_LINE TUNSETOFFLOAD KVM_GET_LAPIC KVM_GET_MSRS KVM_GET_XCRS KVM_GET_DEBUGREGS KVM_GET_TSC_KHZ  # run the guest; complete instructions for the emulator; the halt probe; the UART interrupt; virtio-net offloads the driver accepted; save the vCPU's state for a snapshot
    write                                  # the UART's output to the console; eventfd signals (irqfd, exit latch)
    """
}
