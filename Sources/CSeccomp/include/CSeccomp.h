#ifndef CSECCOMP_H
#define CSECCOMP_H
// The C shim over Debian's libseccomp (libseccomp-dev) and the hardening
// calls glibc has no wrapper for (capset, close_range).
#include <stddef.h>
#include <stdint.h>

static const uint32_t SWL_SCMP_ACT_ALLOW = 0x7fff0000U;
static const uint32_t SWL_SCMP_ACT_LOG = 0x7ffc0000U;
static const uint32_t SWL_SCMP_ACT_KILL_PROCESS = 0x80000000U;

/// A new filter context with `default_action` for every syscall not allowed; NULL on failure.
void *swl_scmp_new(uint32_t default_action);
void swl_scmp_release(void *ctx);
/// The native syscall number of `name`, or a negative number if unknown.
int swl_scmp_resolve(const char *name);
/// The name of native syscall `nr` (malloc'ed; free it), or NULL.
char *swl_scmp_name(int nr);
/// Allows syscall `nr` (arg_index < 0), or only when (arg[arg_index] & mask) == value.
int swl_scmp_allow(void *ctx, int nr, int arg_index, uint64_t mask, uint64_t value);
/// Sets no_new_privs and loads the filter into the calling thread. 0 or -errno.
int swl_scmp_load(void *ctx);
/// Compiles the filter to classic BPF: *prog is malloc'ed (free it), *len in bytes. 0 or -errno.
int swl_scmp_compile(void *ctx, void **prog, size_t *len);
/// Sets no_new_privs and installs a compiled filter in the calling thread. 0 or -errno.
int swl_seccomp_install(const void *prog, size_t len);

/// Drops every capability of the calling thread (effective, permitted, inheritable).
int swl_drop_capabilities(void);
/// prctl(PR_SET_NO_NEW_PRIVS, 1) for the calling thread.
int swl_set_no_new_privs(void);
/// setrlimit(resource, {soft, hard}) for RLIMIT_NOFILE (0), RLIMIT_NPROC (1), RLIMIT_CORE (2).
int swl_set_rlimit(int which, uint64_t soft, uint64_t hard);
/// The hard RLIMIT_NOFILE.
uint64_t swl_nofile_hard(void);
/// mallopt(M_ARENA_MAX, 1): one malloc arena for every thread, set before
/// any thread exists, so the allocator never opens a file (see shim.c). 0 or -1.
int swl_malloc_single_arena(void);
/// Closes every descriptor >= first (close_range, or one by one where missing).
int swl_close_from(int first);
/// Closes every descriptor in [first, last].
int swl_close_range(unsigned first, unsigned last);

#endif
