#define _GNU_SOURCE
#include "CSeccomp.h"
#include <errno.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

void *swl_scmp_new(uint32_t default_action) { return seccomp_init(default_action); }
void swl_scmp_release(void *ctx) { seccomp_release(ctx); }
int swl_scmp_resolve(const char *name) { return seccomp_syscall_resolve_name(name); }
char *swl_scmp_name(int nr) { return seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr); }

int swl_scmp_allow(void *ctx, int nr, int arg_index, uint64_t mask, uint64_t value) {
    if (arg_index < 0) return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    struct scmp_arg_cmp cmp = { .arg = (unsigned)arg_index, .op = SCMP_CMP_MASKED_EQ, .datum_a = mask, .datum_b = value };
    return seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 1, &cmp);
}

int swl_scmp_load(void *ctx) {
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1);
    if (rc != 0) return rc;
    return seccomp_load(ctx);
}

int swl_scmp_compile(void *ctx, void **prog, size_t *len) {
    // libseccomp 2.5 exports only to a descriptor: a memfd, read back.
    int fd = memfd_create("seccomp-bpf", MFD_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = seccomp_export_bpf(ctx, fd);
    off_t size = rc == 0 ? lseek(fd, 0, SEEK_END) : -1;
    if (rc == 0 && size <= 0) rc = -EINVAL;
    void *buf = rc == 0 ? malloc((size_t)size) : NULL;
    if (rc == 0 && !buf) rc = -ENOMEM;
    if (rc == 0 && pread(fd, buf, (size_t)size, 0) != size) rc = -EIO;
    close(fd);
    if (rc != 0) { free(buf); return rc; }
    *prog = buf;
    *len = (size_t)size;
    return 0;
}

int swl_seccomp_install(const void *prog, size_t len) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
    struct sock_fprog fprog = { .len = (unsigned short)(len / sizeof(struct sock_filter)), .filter = (struct sock_filter *)prog };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) != 0) return -errno;
    return 0;
}

int swl_drop_capabilities(void) {
    struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &header, data);
}

int swl_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }

int swl_set_rlimit(int which, uint64_t soft, uint64_t hard) {
    int resource = which == 0 ? RLIMIT_NOFILE : which == 1 ? RLIMIT_NPROC : RLIMIT_CORE;
    struct rlimit r = { .rlim_cur = soft, .rlim_max = hard };
    return setrlimit(resource, &r);
}

uint64_t swl_nofile_hard(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 1024;
    return r.rlim_max;
}

int swl_close_range(unsigned first, unsigned last) {
    if (first > last) return 0;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, last, 0) == 0) return 0;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (long fd = first; fd < max && fd <= (long)last; fd++) close((int)fd);
    return 0;
}

int swl_close_from(int first) { return swl_close_range((unsigned)first, ~0U); }

int swl_malloc_single_arena(void) {
    // M_ARENA_MAX = 1: every thread allocates from the main (brk) arena. A
    // thread arena's heap is an mmap that glibc shrinks with
    // shrink_heap(), which reads /proc/sys/vm/overcommit_memory the first
    // time (an openat no filtered thread may make); choosing the number of
    // arenas reads /sys/devices/system/cpu/online. With one arena neither
    // path exists. Thread caches (tcache) keep small allocations lock-free.
    return mallopt(M_ARENA_MAX, 1) == 1 ? 0 : -1;
}
