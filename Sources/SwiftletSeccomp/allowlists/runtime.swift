// The allowlist every thread role starts from: what glibc and the Swift
// runtime need on any thread. One syscall per line, then `# reason`.
// Words after the name filter an argument (see Allowlist.swift).
extension Allowlists {
    static let runtime = """
    futex                                  # locks and condition variables (Swift runtime, malloc, Mutex, pthread_join)
    mmap !PROT_EXEC                        # malloc's large blocks and arenas; never executable memory
    munmap                                 # free what malloc mapped
    mprotect !PROT_EXEC                    # malloc arena growth; never makes memory executable
    madvise                                # malloc and thread exit hand memory back (MADV_DONTNEED)
    brk                                    # malloc's main heap
    rt_sigprocmask                         # glibc masks signals around thread exit and in pthread calls
    rt_sigreturn                           # return from the vCPU kick signal's handler
    exit                                   # a thread ends
    exit_group                             # the process ends (also what a Swift trap ends in)
    gettid                                 # Swift's Mutex records its owner thread (priority-inheritance futex)
    """
}
