/*
 * swiftlet-init: PID 1 of the Swiftlet guest. Freestanding: no libc, own _start.
 * The system calls and the two ABIs (`syscall`, and int $0x80 for experiments,
 * where every pointer passed must be static, below 4 GiB) are in
 * ../include/swl_sys.h.
 */
#include "../include/swl_sys.h"

#define O_RDWR 02
#define O_NOCTTY 0400
#define O_SYNC 04010000
#define O_LARGEFILE 0100000 /* compat open does not imply it */
#define PROT_RW 3 /* PROT_READ|PROT_WRITE */
#define MAP_SHARED 1
#define F_GETFD 1
#define BOOT_TIMER_PHYS 0xC0000000UL
#ifdef SWL_SYSCALL_INSN
#define MMAP_OFF BOOT_TIMER_PHYS /* mmap: offset in bytes */
#else
#define MMAP_OFF (BOOT_TIMER_PHYS >> 12) /* mmap2: offset in 4096-byte pages */
#endif
#define AGENT_PATH "/sbin/swiftlet-agent"

static struct { char f[6][65]; } uts; /* new_utsname; f[2] = release */
static char exec_path[256];
static char env_buf[4096];
static char arg_buf[4096];
static uptr exec_argv[64], exec_envp[64];
static int wait_status; /* static: the int $0x80 ABI takes only low pointers */

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
	const char *path = swl_getenv(envp, "SWIFTLET_INIT_EXEC=");
	const char *command = swl_getenv(envp, "SWIFTLET_INIT_RUN=");
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

/* SWIFTLET_AGENT=<port>: become the guest agent (it is then PID 1), keeping the
 * environment, which tells the agent its port. Returns only if that failed. */
static void exec_agent(char **envp)
{
	const char *none[] = { 0 };
	if (!prepare_exec(AGENT_PATH, none, envp)) {
		put(1, "swiftlet-init: environment too large for the agent\n");
		return;
	}
	int r = (int)SC3(NR_execve, exec_path, exec_argv, exec_envp);
	if (r == -2) { /* ENOENT */
		put(1, "swiftlet-init: no agent at " AGENT_PATH "\n");
		return;
	}
	put(1, "swiftlet-init: cannot run " AGENT_PATH ": error ");
	put_num(1, -r);
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

	/* Agent mode: nothing on the console (it stays clean for `swiftlet run`). */
	if (swl_getenv(envp, "SWIFTLET_AGENT=")) {
		if (!timer_ok) put(2, "swiftlet-init: warning: boot timer write failed (/dev/mem)\n");
		exec_agent(envp);
		goto power_off;
	}

	put(1, "swiftlet-init: reached userspace\n");
	if (!timer_ok) put(2, "swiftlet-init: warning: boot timer write failed (/dev/mem)\n");
	if (!IS_ERR(SC1(NR_uname, &uts))) {
		put(1, "swiftlet-init: kernel ");
		put(1, uts.f[2]);
		put(1, "\n");
	}

	run_command(envp);

power_off:
	SC1(NR_sync, 0);
	put(1, "swiftlet-init: powering off\n");
	SWL_POWER_OFF();
	die_loop(); /* PID 1 must never exit: that would panic the kernel */
}

SWL_DEFINE_START
