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
/* image mode */
#define O_RDONLY 0
#define O_WRONLY 01
#define O_CREAT 0100
#define O_EXCL 0200
#define O_NOFOLLOW 0400000
#define O_CLOEXEC 02000000
#define AT_EMPTY_PATH 0x1000
#define IMAGE_DIR "/image"
#define MAX_NAMESERVERS 8

static struct { char f[6][65]; } uts; /* new_utsname; f[2] = release */
static char exec_path[256];
static char env_buf[4096];
static char arg_buf[4096];
static uptr exec_argv[64], exec_envp[64];
static int wait_status; /* static: the int $0x80 ABI takes only low pointers */
static char image_dev[256];
static char etc_buf[1024]; /* the text of the image's /etc/hosts or /etc/resolv.conf */
static unsigned long etc_len;

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

static void agent_failed(int r)
{
	if (r == -2) { /* ENOENT */
		put(1, "swiftlet-init: no agent at " AGENT_PATH "\n");
		return;
	}
	put(1, "swiftlet-init: cannot run " AGENT_PATH ": error ");
	put_num(1, -r);
	put(1, "\n");
}

/* SWIFTLET_AGENT=<port>: become the guest agent (it is then PID 1), keeping the
 * environment, which tells the agent its port. In image mode the agent was
 * opened before the switch to the image (fd >= 0): it is run from that fd.
 * Returns only if that failed. */
static void exec_agent(char **envp, long fd)
{
	const char *none[] = { 0 };
	if (!prepare_exec(AGENT_PATH, none, envp)) {
		put(1, "swiftlet-init: environment too large for the agent\n");
		return;
	}
	int r = fd >= 0 ? (int)sc(NR_execveat, fd, (long)"", (long)exec_argv, (long)exec_envp, AT_EMPTY_PATH, 0)
			: (int)SC3(NR_execve, exec_path, exec_argv, exec_envp);
	agent_failed(r);
}

/* ------------------------------------------------------------------------- */
/* Image mode: SWIFTLET_IMAGE=<block device> (see ../README.md)               */

/* "swiftlet-init: <a><b>: error <N>" on the console, for a failed system call. */
static void complain(const char *a, const char *b, long r)
{
	put(2, "swiftlet-init: ");
	put(2, a);
	put(2, b);
	put(2, ": error ");
	put_num(2, -(int)r); /* (int): the int $0x80 ABI returns 32-bit errors */
	put(2, "\n");
}

/* Appends n bytes of s to etc_buf, bounded (what image_etc writes always
 * fits: its entries are checked and counted first). */
static void etc_add(const char *s, unsigned long n)
{
	if (n > sizeof etc_buf - etc_len) return;
	for (unsigned long i = 0; i < n; i++) etc_buf[etc_len + i] = s[i];
	etc_len += n;
}

/* The n bytes at s are an IPv4 address, a.b.c.d, each 0-255 without leading
 * zeros (which some resolvers read as octal). */
static int is_ipv4(const char *s, unsigned long n)
{
	int parts = 0, digits = 0, v = 0;
	for (unsigned long i = 0; i <= n; i++) {
		if (i == n || s[i] == '.') {
			if (!digits) return 0;
			parts++;
			digits = v = 0;
			continue;
		}
		if (s[i] < '0' || s[i] > '9' || (digits && !v)) return 0;
		v = v * 10 + (s[i] - '0');
		if (++digits > 3 || v > 255) return 0;
	}
	return parts == 4;
}

/* The n bytes at s look like an IPv6 address: hex digits, ':' and '.' (an
 * embedded IPv4), at least two ':'. Zone ids (%eth0) are not taken. */
static int is_ipv6(const char *s, unsigned long n)
{
	int colons = 0;
	if (n > 45) return 0;
	for (unsigned long i = 0; i < n; i++) {
		char c = s[i];
		if (c == ':') colons++;
		else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '.')) return 0;
	}
	return colons >= 2;
}

/* Replaces the image's file `path` with etc_buf. What is there (a file, or a
 * symlink such as systemd-resolved's resolv.conf) is removed, never followed. */
static void write_etc(const char *path)
{
	SC1(NR_unlink, path); /* ENOENT is fine; other errors show in the open */
	long fd = SC3(NR_open, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_LARGEFILE, 0644);
	if (IS_ERR(fd)) { complain("cannot create ", path, fd); return; }
	long r = SC3(NR_write, fd, etc_buf, etc_len);
	if (IS_ERR(r)) complain("cannot write ", path, r);
	SC1(NR_close, fd);
}

/* SWIFTLET_GUEST_IP=a.b.c.d: /etc/hosts names localhost and this guest (the
 * hostname the agent sets). With it, SWIFTLET_NAMESERVER=ip[,ip...]: one
 * `nameserver` line each in /etc/resolv.conf. Run inside the image (after the
 * switch), so that an /etc that is a symlink resolves in the image. */
static void image_etc(char **envp)
{
	static const char hosts[] = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
	static const char name[] = " " SWL_HOSTNAME "\n";
	const char *ip = swl_getenv(envp, "SWIFTLET_GUEST_IP=");
	if (!ip) return;
	unsigned long n = slen(ip);
	if (!is_ipv4(ip, n)) {
		put(2, "swiftlet-init: SWIFTLET_GUEST_IP is not an IPv4 address: no /etc/hosts\n");
		return;
	}
	SC2(NR_mkdir, "/etc", 0755); /* EEXIST is fine */
	etc_len = 0;
	etc_add(hosts, sizeof hosts - 1);
	etc_add(ip, n);
	etc_add(name, sizeof name - 1);
	write_etc("/etc/hosts");

	const char *ns = swl_getenv(envp, "SWIFTLET_NAMESERVER=");
	if (!ns) return;
	etc_len = 0;
	int count = 0, skipped = 0;
	for (const char *p = ns;;) {
		const char *e = p;
		while (*e && *e != ',') e++;
		unsigned long k = (unsigned long)(e - p);
		if (count < MAX_NAMESERVERS && (is_ipv4(p, k) || is_ipv6(p, k))) {
			etc_add("nameserver ", 11);
			etc_add(p, k);
			etc_add("\n", 1);
			count++;
		} else skipped = 1;
		if (!*e) break;
		p = e + 1;
	}
	if (skipped) put(2, "swiftlet-init: SWIFTLET_NAMESERVER: bad or extra entries left out\n");
	if (count) write_etc("/etc/resolv.conf");
}

/* What a Linux system expects to find mounted, inside the image. The
 * mount points are made when missing (with umask 0: these modes). */
static const struct {
	const char *source, *dir, *type, *data;
	unsigned long flags;
	int mode;
} image_mounts[] = {
	{ "proc", "/proc", "proc", 0, MS_NOSUID | MS_NODEV | MS_NOEXEC, 0755 },
	{ "sysfs", "/sys", "sysfs", 0, MS_NOSUID | MS_NODEV | MS_NOEXEC, 0755 },
	{ "devtmpfs", "/dev", "devtmpfs", 0, MS_NOSUID, 0755 },
	{ "devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620", MS_NOSUID | MS_NOEXEC, 0755 },
	{ "tmpfs", "/dev/shm", "tmpfs", "mode=01777", MS_NOSUID | MS_NODEV, 01777 },
	{ "tmpfs", "/tmp", "tmpfs", "mode=01777", MS_NOSUID | MS_NODEV, 01777 },
};

/* SWIFTLET_IMAGE=<block device>: mount it (ext4) on /image and make it the
 * root, the way switch_root does (pivot_root cannot move an initramfs away):
 * chdir, MS_MOVE onto /, chroot. Then, inside it, the mounts above and the
 * /etc files. The agent lives in the initramfs, not in the image: when
 * agent_fd is given, it is opened before the switch. `dev_mounted`: init
 * already mounted devtmpfs on /dev (for /dev/mem), which has the device node.
 * Returns 0, or -1 after one line on the console (the caller powers off). */
static int enter_image(const char *dev, char **envp, int dev_mounted, long *agent_fd)
{
	unsigned long pos = 0;
	if (dev[0] != '/' || !stash(image_dev, sizeof image_dev, &pos, dev)) {
		put(2, "swiftlet-init: SWIFTLET_IMAGE is not an absolute path of at most 255 bytes\n");
		return -1;
	}
	if (!dev_mounted) sc(NR_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0, 0);
	SC2(NR_mkdir, IMAGE_DIR, 0755); /* agent-initramfs.cpio has it; other initramfs may not */
	/* Read-write: the host attaches the drive as a copy-on-write layer, so
	 * the guest's writes never reach the image file. */
	long r = sc(NR_mount, (long)image_dev, (long)IMAGE_DIR, (long)"ext4", MS_NOATIME, 0, 0);
	if (IS_ERR(r)) { complain("cannot mount the image ", image_dev, r); return -1; }
	if (agent_fd) {
		long fd = SC3(NR_open, AGENT_PATH, O_RDONLY | O_CLOEXEC | O_LARGEFILE, 0);
		if (IS_ERR(fd)) { agent_failed((int)fd); return -1; }
		*agent_fd = fd;
	}
	const char *step = "chdir " IMAGE_DIR;
	r = SC1(NR_chdir, IMAGE_DIR);
	if (!IS_ERR(r)) { step = "move to /"; r = sc(NR_mount, (long)".", (long)"/", 0, MS_MOVE, 0, 0); }
	if (!IS_ERR(r)) { step = "chroot"; r = SC1(NR_chroot, "."); }
	if (!IS_ERR(r)) { step = "chdir /"; r = SC1(NR_chdir, "/"); }
	if (IS_ERR(r)) { complain("cannot switch to the image: ", step, r); return -1; }

	long old_umask = SC1(NR_umask, 0);
	for (unsigned long i = 0; i < sizeof image_mounts / sizeof image_mounts[0]; i++) {
		SC2(NR_mkdir, image_mounts[i].dir, image_mounts[i].mode); /* EEXIST is fine */
		r = sc(NR_mount, (long)image_mounts[i].source, (long)image_mounts[i].dir, (long)image_mounts[i].type,
		       (long)image_mounts[i].flags, (long)image_mounts[i].data, 0);
		if (IS_ERR(r)) complain("cannot mount ", image_mounts[i].dir, r); /* the job may not need it */
	}
	image_etc(envp);
	SC1(NR_umask, old_umask);
	return 0;
}

__attribute__((noreturn, used)) void start_c(long *sp) /* called from _start */
{
	char **envp = (char **)(sp + 2 + sp[0]); /* sp: argc, argv[argc], NULL, envp[], NULL */

	if (SC1(NR_getpid, 0) != 1) { /* never do mount/reboot anywhere but in the guest */
		put(2, "swiftlet-init: must run as PID 1\n");
		SC1(NR_exit, 1);
	}

	int dev_mounted = 0;
	long fd = SC3(NR_open, "/dev/mem", O_RDWR | O_SYNC | O_LARGEFILE, 0);
	if (IS_ERR(fd)) { /* no /dev/mem node in the image: get one from devtmpfs */
		sc(NR_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0, 0);
		dev_mounted = 1;
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

	/* Image mode: the job's root is the image on this block device. */
	const char *image = swl_getenv(envp, "SWIFTLET_IMAGE=");

	/* Agent mode: nothing on the console (it stays clean for `swiftlet run`). */
	if (swl_getenv(envp, "SWIFTLET_AGENT=")) {
		if (!timer_ok) put(2, "swiftlet-init: warning: boot timer write failed (/dev/mem)\n");
		long agent_fd = -1;
		if (image && enter_image(image, envp, dev_mounted, &agent_fd)) goto power_off;
		exec_agent(envp, agent_fd);
		goto power_off;
	}

	put(1, "swiftlet-init: reached userspace\n");
	if (!timer_ok) put(2, "swiftlet-init: warning: boot timer write failed (/dev/mem)\n");
	if (!IS_ERR(SC1(NR_uname, &uts))) {
		put(1, "swiftlet-init: kernel ");
		put(1, uts.f[2]);
		put(1, "\n");
	}

	if (image && enter_image(image, envp, dev_mounted, 0)) goto power_off;
	run_command(envp);

power_off:
	SC1(NR_sync, 0);
	put(1, "swiftlet-init: powering off\n");
	SWL_POWER_OFF();
	die_loop(); /* PID 1 must never exit: that would panic the kernel */
}

SWL_DEFINE_START
