// The allowlist every thread role starts from: what glibc and the Swift
// runtime need on any thread. One syscall per line, then `# reason`.
// Words after the name filter an argument (see Allowlist.swift).
//
// The audit of lazily taken library paths: code that runs rarely (after a
// burst of allocation, at thread exit, on an error) on a filtered thread, and
// makes a syscall the common path never shows. Each is handled at its root
// where one exists; what is left is allowed here with its reason.
//
// glibc malloc, every role:
// - A thread arena's heap shrinks through shrink_heap(), which the first time
//   reads /proc/sys/vm/overcommit_memory (openat): seen killing `run`'s agent
//   thread after 17-27 MB of job output. Sizing the arenas reads
//   /sys/devices/system/cpu/online. Handled: Seccomp.enable sets
//   M_ARENA_MAX to 1 before any thread exists, so there are no thread arenas.
// - The main arena grows and trims with brk; when brk cannot grow it falls
//   back to mmap; blocks over the mmap threshold are mmap'ed and munmap'ed;
//   realloc of such a block is mremap; free may madvise. Allowed below.
// - tcache (per-thread caches) is set up by the thread's first malloc: only
//   the above.
// glibc, elsewhere:
// - Thread exit frees the thread's tcache (the above), madvises the unused
//   stack away and ends with exit; glibc masks signals around it. No file.
// - clock_gettime is a vDSO call, but the vDSO falls back to the syscall when
//   the clocksource cannot be read from user space (a TSC marked unstable,
//   the clocksource switched to acpi_pm): allowed below.
// - strerror reads no message catalog: Swiftlet never calls setlocale, so
//   the C locale's built-in strings are used.
// - stdio's first write to stdout fstat()s it (newfstatat): only `print` does
//   that, and only the control thread prints (control.swift allows it).
//   Every other thread writes with write(2).
// - pthread_kill is getpid + tgkill: the control thread only (the vCPU kick).
// Swift runtime:
// - Metadata and conformance caches: malloc and futex (dl_iterate_phdr takes
//   the loader's lock). swift_once: futex. Mutex: futex and gettid.
// - The Hasher's seed comes from getrandom in a static constructor at
//   process start, before any filter; SystemRandomNumberGenerator is never
//   used on a filtered thread (the job's seed is drawn before the guest runs).
// - A Swift trap (ud2, SIGILL) ends the process whatever the filter does; the
//   runtime's crash handler may try to start its backtracer, which seccomp
//   refuses, so such a death can show as SIGSYS instead of SIGILL.
// - Swiftlet's own binary does not import Foundation in any filtered code path.
extension Allowlists {
    static let runtime = """
    futex                                  # locks and condition variables (Swift runtime, malloc, Mutex, pthread_join)
    mmap !PROT_EXEC                        # malloc's large blocks, and its main arena when brk cannot grow; never executable memory
    munmap                                 # free what malloc mapped
    mremap                                 # realloc of a block malloc mapped on its own (over the mmap threshold)
    mprotect !PROT_EXEC                    # malloc arena growth; never makes memory executable
    madvise                                # malloc and thread exit hand memory back (MADV_DONTNEED)
    brk                                    # malloc's main heap (the only arena: M_ARENA_MAX is 1)
    rt_sigprocmask                         # glibc masks signals around thread exit and in pthread calls
    rt_sigreturn                           # return from the vCPU kick signal's handler
    exit                                   # a thread ends
    exit_group                             # the process ends (also what a Swift trap ends in)
    gettid                                 # Swift's Mutex records its owner thread (priority-inheritance futex)
    clock_gettime                          # the vDSO's fallback when the clocksource cannot be read in user space; the process CPU clock (vcpu0's --boot-timer figure) is never in the vDSO
    """
}
