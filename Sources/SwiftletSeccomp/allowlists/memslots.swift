// The memory-slot helper (`memslots`): registers guest memory with KVM while
// the main thread loads the kernel; it ends before the guest runs. The base is `runtime`.
extension Allowlists {
    static let memslots = """
    @runtime                               # glibc and Swift runtime basics
    ioctl KVM_SET_USER_MEMORY_REGION       # register guest memory
    """
}
