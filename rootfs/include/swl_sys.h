/*
 * swl_sys.h: what the freestanding guest programs (init/init.c, agent/agent.c)
 * share: raw system calls, the process entry point, a few string helpers.
 * No libc: each program is one translation unit that includes this header.
 *
 * Two system-call ABIs. build.sh passes -DSWL_SYSCALL_INSN: the normal 64-bit
 * `syscall`, which also works on the development machines' nested PVM KVM
 * thanks to the guest-kernel patch described in kernels/README.md. Without it,
 * the legacy i386 compat ABI (`int $0x80`, CONFIG_IA32_EMULATION): eax=nr,
 * args in ebx ecx edx esi edi ebp, kept for init experiments only (on PVM it
 * raises #UD from user mode; the agent requires the `syscall` ABI). That ABI
 * only carries 32-bit values, so every pointer passed must be below 4 GiB: the
 * binaries are linked non-PIE at 0x400000, and init keeps ALL its syscall
 * buffers in static storage; never pass a stack address there (the 64-bit
 * stack sits near 0x7ffc...).
 */
#ifndef SWL_SYS_H
#define SWL_SYS_H

#ifdef SWL_SYSCALL_INSN
enum {
	NR_read = 0, NR_write = 1, NR_open = 2, NR_close = 3, NR_poll = 7, NR_mmap = 9,
	NR_rt_sigprocmask = 14, NR_ioctl = 16, NR_readv = 19, NR_writev = 20, NR_pause = 34,
	NR_getpid = 39, NR_socket = 41, NR_connect = 42, NR_accept = 43, NR_sendto = 44,
	NR_recvfrom = 45, NR_shutdown = 48, NR_bind = 49, NR_listen = 50, NR_clone = 56,
	NR_fork = 57, NR_execve = 59, NR_exit = 60, NR_wait4 = 61, NR_kill = 62, NR_uname = 63,
	NR_fcntl = 72, NR_chdir = 80, NR_setsid = 112, NR_sync = 162, NR_mount = 165,
	NR_prctl = 157, NR_reboot = 169, NR_clock_gettime = 228, NR_exit_group = 231, NR_signalfd4 = 289,
	NR_dup3 = 292, NR_pipe2 = 293, NR_sethostname = 170,
	/* image mode (init) and job credentials / warm-up limits (agent) */
	NR_unlink = 87, NR_mkdir = 83, NR_umask = 95, NR_chroot = 161, NR_setuid = 105,
	NR_setgid = 106, NR_setgroups = 116, NR_execveat = 322, NR_pidfd_open = 434,
};
typedef unsigned long uptr; /* argv/envp element type */
static inline long sc(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}
#define IS_ERR(r) ((unsigned long)(r) > -4096UL)
#else
/* i386 compat numbers: only what init uses. */
enum { NR_exit = 1, NR_write = 4, NR_open = 5, NR_close = 6, NR_getpid = 20, NR_mount = 21,
       NR_mmap = 192 /* mmap2 */, NR_uname = 122 /* newuname */, NR_execve = 11, NR_sync = 36,
       NR_reboot = 88, NR_pause = 29, NR_fcntl = 55, NR_fork = 2, NR_wait4 = 114,
       NR_chdir = 12, NR_unlink = 10, NR_mkdir = 39, NR_umask = 60, NR_chroot = 61, NR_execveat = 358 };
typedef unsigned int uptr; /* compat execve wants arrays of 32-bit pointers */
static long sc(long n, long a, long b, long c, long d, long e, long f)
{
	/* 6th arg goes in ebp, which GCC won't let us name: swap it in via r12. */
	register long r12 __asm__("r12") = f;
	unsigned int r; /* the result is a 32-bit value: zero-extend (mmap2 may return >= 2 GiB) */
	__asm__ volatile("xchg %%rbp, %%r12\n\tint $0x80\n\txchg %%rbp, %%r12"
			 : "=a"(r), "+r"(r12) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
			 : "r8", "r9", "r10", "r11", "memory", "cc");
	return r;
}
#define IS_ERR(r) ((unsigned long)(r) > 0xfffff000UL)
#endif

#define SC0(n) sc(n, 0, 0, 0, 0, 0, 0)
#define SC1(n, a) sc(n, (long)(a), 0, 0, 0, 0, 0)
#define SC2(n, a, b) sc(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define SC3(n, a, b, c) sc(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define SC4(n, a, b, c, d) sc(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define SC5(n, a, b, c, d, e) sc(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

/* mount(2) flags */
#define MS_NOSUID 2UL
#define MS_NODEV 4UL
#define MS_NOEXEC 8UL
#define MS_NOATIME 1024UL
#define MS_MOVE 8192UL
/* reboot(2) magic and LINUX_REBOOT_CMD_POWER_OFF */
#define SWL_POWER_OFF() sc(NR_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0, 0)

/* The guest's hostname: the agent sets it, init names it in an image's /etc/hosts. */
#define SWL_HOSTNAME "swiftlet"

/* Entry: rsp points at argc. Align the stack as the x86_64 ABI expects and call
 * `void start_c(long *sp)` (argc, argv[argc], NULL, envp[], NULL). */
#define SWL_DEFINE_START                                                                  \
	__asm__(".text\n.global _start\n_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n" \
		"\tand $-16, %rsp\n\tcall start_c\n\thlt\n");

#define SWL_FN static __attribute__((unused))

SWL_FN unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }
SWL_FN void put(int fd, const char *s) { SC3(NR_write, fd, s, slen(s)); }

/* Value of `key` (e.g. "SWIFTLET_INIT_RUN=") in envp if set and non-empty, else 0. */
SWL_FN const char *swl_getenv(char **envp, const char *key)
{
	for (char **e = envp; *e; e++) {
		unsigned long i = 0;
		while (key[i] && (*e)[i] == key[i]) i++;
		if (!key[i] && (*e)[i]) return *e + i;
	}
	return 0;
}

/* Decimal text of v at the end of b[24]; returns its start. */
SWL_FN char *swl_fmt_num(char b[24], long v)
{
	char *p = b + 23;
	unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
	*p = 0;
	do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
	if (v < 0) *--p = '-';
	return p;
}

SWL_FN void put_num(int fd, long v)
{
	char b[24];
	put(fd, swl_fmt_num(b, v));
}

#endif
