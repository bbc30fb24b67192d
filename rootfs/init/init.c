/*
 * swiftlet-init: PID 1 of the Swiftlet guest. Freestanding: no libc, own _start.
 *
 * Two system-call ABIs. build.sh passes -DSWL_SYSCALL_INSN: the normal
 * 64-bit `syscall`, which also works on the development machines' nested PVM
 * KVM thanks to the guest-kernel patch described in kernels/README.md.
 * Without it, the legacy i386 compat ABI (`int $0x80`, CONFIG_IA32_EMULATION):
 * eax=nr, args in ebx ecx edx esi edi ebp, kept for experiments (on PVM it
 * raises #UD from user mode). That ABI only carries 32-bit values, so every
 * pointer passed must be below 4 GiB: the binary is linked non-PIE at
 * 0x400000, and ALL syscall buffers live in static storage; never pass a
 * stack address (the 64-bit stack sits near 0x7ffc...).
 */
#define O_RDWR 02
#define O_NOCTTY 0400
#define O_SYNC 04010000
#define O_LARGEFILE 0100000 /* compat open does not imply it */
#define PROT_RW 3 /* PROT_READ|PROT_WRITE */
#define MAP_SHARED 1
#define F_GETFD 1
#define BOOT_TIMER_PHYS 0xC0000000UL

#ifdef SWL_SYSCALL_INSN
enum { NR_exit = 60, NR_write = 1, NR_open = 2, NR_close = 3, NR_getpid = 39, NR_mount = 165,
       NR_mmap = 9, NR_uname = 63, NR_execve = 59, NR_sync = 162, NR_reboot = 169,
       NR_pause = 34, NR_fcntl = 72, NR_fork = 57, NR_wait4 = 61 };
#define MMAP_OFF BOOT_TIMER_PHYS /* mmap: offset in bytes */
typedef unsigned long uptr; /* argv/envp element type */
static long sc(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return r;
}
#define IS_ERR(r) ((unsigned long)(r) > -4096UL)
#else
enum { NR_exit = 1, NR_write = 4, NR_open = 5, NR_close = 6, NR_getpid = 20, NR_mount = 21,
       NR_mmap = 192 /* mmap2 */, NR_uname = 122 /* newuname */, NR_execve = 11, NR_sync = 36,
       NR_reboot = 88, NR_pause = 29, NR_fcntl = 55, NR_fork = 2, NR_wait4 = 114 };
#define MMAP_OFF (BOOT_TIMER_PHYS >> 12) /* mmap2: offset in 4096-byte pages */
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

#define SC1(n, a) sc(n, (long)(a), 0, 0, 0, 0, 0)
#define SC3(n, a, b, c) sc(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

static struct { char f[6][65]; } uts; /* new_utsname; f[2] = release */
static char exec_path[256];
static char env_buf[4096];
static char arg_buf[4096];
static uptr exec_argv[64], exec_envp[64];
static int wait_status; /* static: the int $0x80 ABI takes only low pointers */

static unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }
static void put(int fd, const char *s) { SC3(NR_write, fd, s, slen(s)); }
static __attribute__((noreturn)) void die_loop(void) { for (;;) SC1(NR_pause, 0); }

/* Copy string s into the static buffer at *pos (bounded); returns the copy or 0. */
static char *stash(char *buf, unsigned long cap, unsigned long *pos, const char *s)
{
	unsigned long n = slen(s) + 1;
	if (*pos + n > cap) return 0;
	char *d = buf + *pos;
	for (unsigned long i = 0; i < n; i++) d[i] = s[i];
	*pos += n;
	return d;
}

/* Value of `key` (e.g. "SWIFTLET_INIT_RUN=") in envp, or 0. */
static const char *getenv_(char **envp, const char *key)
{
	for (char **e = envp; *e; e++) {
		unsigned long i = 0;
		while (key[i] && (*e)[i] == key[i]) i++;
		if (!key[i] && (*e)[i]) return *e + i;
	}
	return 0;
}

static void put_num(int fd, long v)
{
	char b[24], *p = b + sizeof b - 1;
	unsigned long u = v < 0 ? -(unsigned long)v : (unsigned long)v;
	*p = 0;
	do { *--p = (char)('0' + u % 10); u /= 10; } while (u);
	if (v < 0) *--p = '-';
	put(fd, p);
}

/* Copies the program's argv (path, then `args`) and init's environment into
 * static storage. Returns 0 if something does not fit. */
static int prepare_exec(const char *path, const char *const *args, char **envp)
{
	unsigned long pos = 0, n = 0;
	if (!stash(exec_path, sizeof exec_path, &pos, path)) return 0;
	exec_argv[n++] = (uptr)(unsigned long)exec_path;
	pos = 0;
	for (int i = 0; args[i] && n < 63; i++) {
		char *c = stash(arg_buf, sizeof arg_buf, &pos, args[i]);
		if (!c) return 0;
		exec_argv[n++] = (uptr)(unsigned long)c;
	}
	exec_argv[n] = 0;
	pos = 0;
	n = 0;
	for (char **e = envp; *e && n < 63; e++) {
		char *c = stash(env_buf, sizeof env_buf, &pos, *e);
		if (c) exec_envp[n++] = (uptr)(unsigned long)c;
	}
	exec_envp[n] = 0;
	return 1;
}

/* SWIFTLET_INIT_EXEC=path: become that program (it is then PID 1).
 * SWIFTLET_INIT_RUN="shell command": run `/bin/sh -c` on it as a child, reap
 * every child until it exits, report its status, then go on to power off.
 * (Init's own arguments are no use for this: the kernel also passes every
 * bare word it does not know, such as `ro`, to init as arguments.) */
static void run_command(char **envp)
{
	const char *path = getenv_(envp, "SWIFTLET_INIT_EXEC=");
	const char *command = getenv_(envp, "SWIFTLET_INIT_RUN=");
	const char *none[] = { 0 };
	const char *shell[] = { "-c", command, 0 };
	int replace = path != 0;
	if (!replace && !command) return;
	if (!prepare_exec(replace ? path : "/bin/sh", replace ? none : shell, envp)) {
		put(2, "swiftlet-init: command too long\n");
		return;
	}
	put(1, replace ? "swiftlet-init: exec " : "swiftlet-init: run ");
	/* The copies: with int $0x80 only low (static) addresses may be passed. */
	put(1, replace ? exec_path : (const char *)(unsigned long)exec_argv[2]);
	put(1, "\n");
	if (replace) {
		SC3(NR_execve, exec_path, exec_argv, exec_envp);
		put(2, "swiftlet-init: execve failed, continuing\n"); /* only returns on error */
		return;
	}
	long pid = SC1(NR_fork, 0);
	if (pid == 0) {
		SC3(NR_execve, exec_path, exec_argv, exec_envp);
		put(2, "swiftlet-init: execve failed\n");
		SC1(NR_exit, 127);
	}
	if (IS_ERR(pid)) { put(2, "swiftlet-init: fork failed\n"); return; }
	for (;;) { /* as PID 1, every orphan is ours to reap too */
		long r = sc(NR_wait4, -1, (long)&wait_status, 0, 0, 0, 0);
		if (IS_ERR(r)) return;
		if (r == pid) break;
	}
	put(1, "swiftlet-init: command exited with status ");
	put_num(1, (wait_status & 0x7f) ? 128 + (wait_status & 0x7f) : (wait_status >> 8) & 0xff);
	put(1, "\n");
}

__attribute__((noreturn, used)) void start_c(long *sp) /* called from _start */
{
	char **envp = (char **)(sp + 2 + sp[0]); /* sp: argc, argv[argc], NULL, envp[], NULL */

	if (SC1(NR_getpid, 0) != 1) { /* never do mount/reboot anywhere but in the guest */
		put(2, "swiftlet-init: must run as PID 1\n");
		SC1(NR_exit, 1);
	}

	long fd = SC3(NR_open, "/dev/mem", O_RDWR | O_SYNC | O_LARGEFILE, 0);
	if (IS_ERR(fd)) { /* no /dev/mem node in the image: get one from devtmpfs */
		sc(NR_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0, 0);
		fd = SC3(NR_open, "/dev/mem", O_RDWR | O_SYNC | O_LARGEFILE, 0);
	}
	/* Boot timer: the VMM traps this MMIO write and records guest-boot time. First thing we do. */
	int timer_ok = 0;
	if (!IS_ERR(fd)) {
		long p = sc(NR_mmap, 0, 4096, PROT_RW, MAP_SHARED, fd, MMAP_OFF);
		if (!IS_ERR(p)) { *(volatile unsigned char *)p = 123; timer_ok = 1; }
		SC1(NR_close, fd); /* mapping stays; frees the fd so console can take 0-2 */
	}

	/* The kernel opens /dev/console as fds 0-2 when it can; fill in any that are missing.
	 * Checking in order means open() (lowest free fd) returns exactly the missing one. */
	for (int i = 0; i < 3; i++)
		if (IS_ERR(SC3(NR_fcntl, i, F_GETFD, 0))) SC3(NR_open, "/dev/console", O_RDWR | O_NOCTTY, 0);

	put(1, "swiftlet-init: reached userspace\n");
	if (!timer_ok) put(2, "swiftlet-init: warning: boot timer write failed (/dev/mem)\n");
	if (!IS_ERR(SC1(NR_uname, &uts))) {
		put(1, "swiftlet-init: kernel ");
		put(1, uts.f[2]);
		put(1, "\n");
	}

	run_command(envp);

	SC1(NR_sync, 0);
	put(1, "swiftlet-init: powering off\n");
	sc(NR_reboot, 0xfee1dead, 672274793, 0x4321fedc, 0, 0, 0); /* LINUX_REBOOT_CMD_POWER_OFF */
	die_loop(); /* PID 1 must never exit: that would panic the kernel */
}

/* Entry: rsp points at argc. Align the stack as the x86_64 ABI expects and call C. */
__asm__(".text\n.global _start\n_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n"
	"\tand $-16, %rsp\n\tcall start_c\n\thlt\n");
