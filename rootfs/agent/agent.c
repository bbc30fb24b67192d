/*
 * swiftlet-agent: runs one job for the host and reports its output and exit
 * status over one AF_VSOCK stream (PROTOCOL.md is the contract).
 *
 * Freestanding and static like init (no libc, own _start, ../include/swl_sys.h):
 * in the guest on nested PVM KVM every kernel entry (system call, page fault)
 * is emulated and costs about a thousand times its native price, so start-up is
 * kept to a few syscalls and pages. The job is started with clone(CLONE_VM |
 * CLONE_VFORK) on a small separate stack: no page tables to copy, no
 * copy-on-write faults.
 *
 *   swiftlet-agent                  the agent (PID 1 in the guest; see PROTOCOL.md)
 *   swiftlet-agent --unix PATH      the same over a Unix stream socket, for tests on
 *                                   the host: never powers off
 *   swiftlet-vsock listen PORT      a vsock pipe for tests (argv[0], or `swiftlet-agent vsock ...`)
 *   swiftlet-vsock connect CID PORT
 */
#ifndef SWL_SYSCALL_INSN
#error "the agent needs the 64-bit syscall ABI (-DSWL_SYSCALL_INSN)"
#endif
#include "../include/swl_sys.h"

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long u64;

/* Linux x86_64 constants */
#define AF_UNIX 1
#define AF_VSOCK 40
#define SOCK_STREAM 1
#define SOCK_CLOEXEC 02000000
#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_NONBLOCK 04000
#define O_CLOEXEC 02000000
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define F_SETPIPE_SZ 1031
#define F_DUPFD_CLOEXEC 1030
#define POLLIN 0x1
#define POLLOUT 0x4
#define POLLERR 0x8
#define POLLHUP 0x10
#define POLLNVAL 0x20
#define SHUT_WR 1
#define SIG_BLOCK 0
#define SIG_SETMASK 2
#define SIGHUP 1
#define SIGINT 2
#define SIGKILL 9
#define SIGPIPE 13
#define SIGTERM 15
#define SIGCHLD 17
#define WNOHANG 1
#define PR_SET_CHILD_SUBREAPER 36
#define CLOCK_REALTIME 0
#define NR_faccessat 269
#define AT_FDCWD (-100)
#define X_OK 1
#define CLOCK_MONOTONIC 1
#define NR_clock_settime 227 /* only the agent sets the clock: not in swl_sys.h */
#define NR_rt_sigaction 13 /* only the agent's start resets dispositions */
#define SIGSTOP 19
#define RNDADDENTROPY 0x40085203 /* _IOW('R', 0x03, int[2]) */
#define RNDRESEEDCRNG 0x5207     /* _IO('R', 0x07) */
#define VMADDR_CID_ANY 0xffffffffU
#define EINTR 4
#define EAGAIN 11
#define ENOENT 2
#define ENOTDIR 20
#define EACCES 13
#define ENOEXEC 8
#define ENAMETOOLONG 36

/* Protocol (PROTOCOL.md) */
#define PROTO_VERSION 1
#define MAX_FRAME (1u << 20)
#define MAX_CHUNK 65536u
#define T_HELLO 0x01
#define T_STDOUT 0x02
#define T_STDERR 0x03
#define T_STARTED 0x04
#define T_EXIT 0x05
#define T_ERROR 0x06
#define T_READY 0x07
#define T_PARKED 0x08
#define T_JOB 0x81
#define T_STDIN 0x82
#define T_SIGNAL 0x83
#define T_PARK 0x84
#define T_CLOSE_OUTPUT 0x85
#define MAX_WARM 16 /* programs one PARK may warm up */
#define JOB_STDIN 1u /* JOB flags */
#define JOB_CLOCK 2u
#define JOB_CREDS 4u
#define MAX_GROUPS 64 /* supplementary groups of a JOB's credentials */
#define WARM_LIMIT_MS 10000 /* PARK: a warm-up program still running then is killed */
#define MAX_SEED 512
#define MAX_ARGS 16384
#define MAX_ENV 16384
#define MAX_STR (128u << 10) /* the kernel's MAX_ARG_STRLEN */
#define MAX_DIR 4095
#define DEFAULT_PORT 52
#define HOST_CID 2
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define LINGER_MS 2000 /* after EXIT/ERROR: wait this long at most for the host to close */

/* gcc may emit calls to these even when freestanding. (Not in the native
 * build of Tests/Fuzz/AgentFuzz, AGENT_FUZZ, which uses libc's.) */
#ifndef AGENT_FUZZ
void *memcpy(void *d, const void *s, unsigned long n)
{
	u8 *dp = d;
	const u8 *sp = s;
	while (n--) *dp++ = *sp++;
	return d;
}
void *memmove(void *d, const void *s, unsigned long n)
{
	u8 *dp = d;
	const u8 *sp = s;
	if (dp <= sp) while (n--) *dp++ = *sp++;
	else while (n--) dp[n] = sp[n];
	return d;
}
void *memset(void *d, int c, unsigned long n)
{
	u8 *dp = d;
	while (n--) *dp++ = (u8)c;
	return d;
}
int memcmp(const void *a, const void *b, unsigned long n)
{
	const u8 *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y) return *x - *y;
	return 0;
}
#endif

struct pollfd { int fd; short events, revents; };
struct iovec { void *base; u64 len; };
struct timespec { long sec, nsec; };
struct sockaddr_vm { unsigned short family, reserved1; u32 port, cid; u8 flags, zero[3]; };
struct sockaddr_un { unsigned short family; char path[108]; };
struct siginfo_fd { u32 signo; u8 rest[124]; }; /* struct signalfd_siginfo */

static u32 le32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }
static u64 le64(const u8 *p) { return le32(p) | (u64)le32(p + 4) << 32; }
static void wr32(u8 *p, u32 v) { p[0] = (u8)v; p[1] = (u8)(v >> 8); p[2] = (u8)(v >> 16); p[3] = (u8)(v >> 24); }
static void wr64(u8 *p, u64 v) { wr32(p, (u32)v); wr32(p + 4, (u32)(v >> 32)); }

static u64 now_ns(void)
{
	struct timespec ts;
	SC2(NR_clock_gettime, CLOCK_MONOTONIC, &ts);
	return (u64)ts.sec * 1000000000UL + (u64)ts.nsec;
}

static const char *errstr(long e)
{
	switch (e) {
	case 1: return "Operation not permitted";
	case 2: return "No such file or directory";
	case 5: return "I/O error";
	case 7: return "Argument list too long";
	case 8: return "Exec format error";
	case 12: return "Out of memory";
	case 13: return "Permission denied";
	case 19: return "No such device";
	case 20: return "Not a directory";
	case 21: return "Is a directory";
	case 22: return "Invalid argument";
	case 24: return "Too many open files";
	case 26: return "Text file busy";
	case 32: return "Broken pipe";
	case 36: return "File name too long";
	case 40: return "Too many levels of symbolic links";
	case 97: return "Address family not supported by protocol";
	case 99: return "Cannot assign requested address";
	case 98: return "Address already in use";
	case 101: return "Network is unreachable";
	case 104: return "Connection reset by peer";
	case 110: return "Connection timed out";
	case 111: return "Connection refused";
	case 113: return "No route to host";
	default: return "Unknown error";
	}
}

static __attribute__((noreturn)) void exit_(int code)
{
	for (;;) SC1(NR_exit_group, code);
}

/* Parses a decimal u32; returns 0 on success. */
static int parse_u32(const char *s, u32 *out)
{
	u64 v = 0;
	if (!s || !*s) return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9') return -1;
		v = v * 10 + (u64)(*s - '0');
		if (v > 0xffffffffUL) return -1;
	}
	*out = (u32)v;
	return 0;
}

static int streq(const char *a, const char *b)
{
	while (*a && *a == *b) a++, b++;
	return *a == *b;
}

/* Writes all of buf (blocking fd). Returns 0, or a negative errno. */
static long write_all(int fd, const void *buf, u64 n)
{
	const u8 *p = buf;
	while (n) {
		long r = SC3(NR_write, fd, p, n);
		if (r == -EINTR) continue;
		if (r < 0) return r;
		if (r == 0) return -5;
		p += r;
		n -= (u64)r;
	}
	return 0;
}

/* ------------------------------------------------------------------------- */
/* Agent state. Small things first: they share the first .bss page.           */

static struct {
	u64 t_start;
	int pid1, pid1_known; /* power off at the end (PID 1 and not --unix): is_pid1() */
	int unix_mode;
	const char *unix_path;
	u32 cid, port;
	int sock, sigfd;
	u32 backoff_ms;
	int retry, synced, said_retrying;
	/* the job */
	int started, reaped;
	long pid;
	int status;
	u64 t_end;
	int out_fd, err_fd, in_fd; /* our ends, -1 once closed */
	int out_eof, err_eof;      /* EOF seen (the empty frame is sent or queued) */
	int eof_queued;            /* empty STDOUT/STDERR frames not sent yet: bits 1, 2 */
	int out_big, err_big;      /* pipe enlarged */
	const u8 *pending;         /* STDIN bytes not yet in the pipe (they point into rx) */
	u64 pending_len;
	u64 rx_start, rx_end;      /* unparsed bytes of rx */
	/* the parsed JOB (pointers into rx, valid until the job is spawned) */
	u32 flags;
	const char *workdir, *path;
	int in_root; /* the working directory is "/" */
	const u8 *seed;
	u32 seed_len;
	u64 wall_ns; /* the host's CLOCK_REALTIME (flag JOB_CLOCK) */
	u32 uid, gid, ngroups; /* the job's credentials (flag JOB_CREDS) */
	int image; /* init switched to an image (SWIFTLET_IMAGE): it mounted /proc */
} g;
static u32 job_groups[MAX_GROUPS]; /* setgroups(2) wants an array of gid_t */

static struct { int count, size; u8 buf[MAX_SEED]; } rnd; /* struct rand_pool_info */

/* argv with one spare slot in front (for the `sh FILE args` ENOEXEC fallback) */
static char *job_argv[1 + MAX_ARGS + 1] __attribute__((aligned(4096)));
static char *job_envp[MAX_ENV + 3];
static u8 child_stack[16384] __attribute__((aligned(4096)));
#define TX_SEGS 4
static u8 tx[TX_SEGS * (8 + MAX_CHUNK)] __attribute__((aligned(4096)));
static u8 rx[8 + MAX_FRAME + MAX_CHUNK] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void finish(int code);

/* Asked only when it matters (at the end), to keep start-up short. */
static int is_pid1(void)
{
	if (g.unix_mode) return 0;
	if (!g.pid1_known) {
		g.pid1 = SC0(NR_getpid) == 1;
		g.pid1_known = 1;
	}
	return g.pid1;
}
static void job_loop(void);
static void setup_signals(void);
static void pipe_eof(int *fd, int type, int *eof);

static long send_frame(int type, const void *payload, u32 n)
{
	u8 b[8 + 256];
	if (n > sizeof b - 8) n = sizeof b - 8; /* control frames and ERROR text only */
	wr32(b, n);
	b[4] = (u8)type;
	b[5] = b[6] = b[7] = 0;
	memcpy(b + 8, payload, n);
	return write_all(g.sock, b, 8 + n);
}

/* The host is gone while a job runs: kill the job, then stop. */
static __attribute__((noreturn)) void conn_lost(void)
{
	if (g.started) SC2(NR_kill, -g.pid, SIGKILL);
	put(2, "swiftlet-agent: lost the host connection\n");
	g.sock = -1;
	finish(1);
}

/* Frames to the host while the job runs: a failed write means the host is gone. */
static void send_or_die(int type, const void *payload, u32 n)
{
	if (send_frame(type, payload, n) < 0) conn_lost();
}

/* After EXIT or ERROR: half-close, and wait (bounded) for the host to close its
 * end, so that the last frames are not lost in the guest's vsock transmit
 * queue when the VM powers off. */
static void linger(void)
{
	if (g.sock < 0) return;
	SC2(NR_shutdown, g.sock, SHUT_WR);
	if (is_pid1()) { SC0(NR_sync); g.synced = 1; } /* overlaps with the host's close */
	/* Whatever still comes is discarded; a host that keeps sending gets 16 rounds. */
	for (int i = 0; i < 16; i++) {
		struct pollfd p = { g.sock, POLLIN, 0 };
		long r = SC3(NR_poll, &p, 1, LINGER_MS);
		if (r == -EINTR) continue;
		if (r <= 0) break;
		r = SC3(NR_read, g.sock, rx, 65536);
		if (r <= 0 && r != -EINTR) break;
	}
	if (!is_pid1()) SC1(NR_close, g.sock); /* (no need before powering off) */
	g.sock = -1;
}

static __attribute__((noreturn)) void finish(int code)
{
	linger();
	if (is_pid1()) {
		if (!g.synced) SC0(NR_sync);
		SWL_POWER_OFF();
		for (;;) SC0(NR_pause); /* PID 1 must never exit */
	}
	exit_(code);
}

/* The agent cannot run the job (malformed JOB, protocol error, no fork). */
static __attribute__((noreturn)) void fail(const char *what, const char *detail)
{
	char m[256];
	u32 n = 0;
	for (const char *s = what; *s && n < sizeof m - 1; s++) m[n++] = *s;
	if (detail) {
		for (const char *s = ": "; *s && n < sizeof m - 1; s++) m[n++] = *s;
		for (const char *s = detail; *s && n < sizeof m - 1; s++) m[n++] = *s;
	}
	m[n] = 0;
	put(2, "swiftlet-agent: ");
	put(2, m);
	put(2, "\n");
	if (g.sock >= 0 && send_frame(T_ERROR, m, n) < 0) g.sock = -1;
	if (g.started) SC2(NR_kill, -g.pid, SIGKILL);
	finish(1);
}

/* ------------------------------------------------------------------------- */
/* Connecting to the host                                                     */

static void sleep_ms(u32 ms)
{
	SC3(NR_poll, 0, 0, ms);
}

/* Connects (with backoff) until HELLO and READY are sent. */
static void connect_host(void)
{
	for (;;) {
		/* After a failure or a drop: at once, then 10 ms doubling to 500 ms. */
		if (g.retry) {
			if (g.backoff_ms) sleep_ms(g.backoff_ms);
			g.backoff_ms = g.backoff_ms ? (g.backoff_ms >= 250 ? 500 : g.backoff_ms * 2) : 10;
		}
		g.retry = 1;
		long s;
		long r;
		if (g.unix_mode) {
			struct sockaddr_un a;
			memset(&a, 0, sizeof a);
			a.family = AF_UNIX;
			memcpy(a.path, g.unix_path, slen(g.unix_path));
			s = SC3(NR_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (s < 0) fail("socket", errstr(-s));
			r = SC3(NR_connect, s, &a, sizeof a);
		} else {
			struct sockaddr_vm a = { AF_VSOCK, 0, g.port, g.cid, 0, { 0, 0, 0 } };
			s = SC3(NR_socket, AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (s < 0) fail("socket", errstr(-s));
			r = SC3(NR_connect, s, &a, sizeof a);
		}
		if (r < 0) {
			SC1(NR_close, s);
			/* One line on the console once it has failed for about a second. */
			if (g.backoff_ms == 500 && !g.said_retrying) {
				g.said_retrying = 1;
				put(2, "swiftlet-agent: cannot connect to the host (");
				put(2, errstr(-r));
				put(2, "), still trying\n");
			}
			continue;
		}
		g.sock = (int)s;
		u8 h[24];
		wr32(h, PROTO_VERSION);
		wr32(h + 4, 0);
		wr64(h + 8, g.t_start);
		wr64(h + 16, now_ns());
		if (send_frame(T_HELLO, h, sizeof h) == 0) {
			setup_signals();
			/* Idle until the JOB: a safe point to snapshot the VM (PROTOCOL.md). */
			if (send_frame(T_READY, 0, 0) == 0) return;
		}
		SC1(NR_close, s);
		g.sock = -1;
	}
}

/* ------------------------------------------------------------------------- */
/* The job                                                                    */

/* Next NUL-terminated string of at most `max` bytes at p[*off] (below len), or 0. */
static const char *next_str(const u8 *p, u32 len, u32 *off, u32 max)
{
	u32 i = *off;
	while (i < len && p[i]) {
		if (i - *off >= max) return 0;
		i++;
	}
	if (i >= len) return 0;
	const char *s = (const char *)p + *off;
	*off = i + 1;
	return s;
}

static int has_prefix(const char *s, const char *pre)
{
	while (*pre)
		if (*s++ != *pre++) return 0;
	return 1;
}

/* Validates the JOB payload and fills g and job_argv/job_envp (pointers into p).
 * Returns 0, or why the JOB is malformed. Reads only p[0..len). */
static const char *parse_job(const u8 *p, u32 len)
{
	if (len < 16) return "truncated header";
	u32 flags = le32(p), argc = le32(p + 4), envc = le32(p + 8), seed_len = le32(p + 12);
	if (flags & ~(JOB_STDIN | JOB_CLOCK | JOB_CREDS)) return "unknown flags";
	if (argc < 1 || argc > MAX_ARGS) return "argc out of range";
	if (envc > MAX_ENV) return "envc out of range";
	u32 off = 16;
	if (flags & JOB_CLOCK) {
		if (len - off < 8) return "truncated wall clock";
		g.wall_ns = le64(p + off);
		off += 8;
	}
	if (flags & JOB_CREDS) {
		if (len - off < 16) return "truncated credentials";
		u32 ngroups = le32(p + off + 8);
		if (ngroups > MAX_GROUPS) return "credentials: more than 64 groups";
		if (le32(p + off + 12)) return "credentials: reserved field not zero";
		g.uid = le32(p + off);
		g.gid = le32(p + off + 4);
		off += 16;
		if (len - off < ngroups * 4) return "truncated credentials: groups";
		for (u32 i = 0; i < ngroups; i++) job_groups[i] = le32(p + off + 4 * i);
		g.ngroups = ngroups;
		off += ngroups * 4;
	}
	if (seed_len > MAX_SEED) return "seed too long";
	if (seed_len > len - off) return "truncated seed";
	g.flags = flags;
	g.seed = p + off;
	g.seed_len = seed_len;
	off += seed_len;
	const char *dir = next_str(p, len, &off, MAX_DIR);
	if (!dir) return "bad working directory";
	g.workdir = *dir ? dir : "/";
	g.in_root = dir[0] == 0 || (dir[0] == '/' && dir[1] == 0);
	char **argv = job_argv + 1;
	for (u32 i = 0; i < argc; i++) {
		const char *a = next_str(p, len, &off, MAX_STR);
		if (!a) return "bad argument string";
		argv[i] = (char *)a;
	}
	argv[argc] = 0;
	if (!argv[0][0]) return "empty argv[0]";
	int have_path = 0, have_home = 0;
	g.path = DEFAULT_PATH;
	for (u32 i = 0; i < envc; i++) {
		const char *e = next_str(p, len, &off, MAX_STR);
		if (!e) return "bad environment string";
		if (e[0] == '=' || !e[0]) return "environment string without a name";
		const char *q = e;
		while (*q && *q != '=') q++;
		if (!*q) return "environment string without '='";
		if (has_prefix(e, "PATH=")) { have_path = 1; g.path = e + 5; }
		if (has_prefix(e, "HOME=")) have_home = 1;
		job_envp[i] = (char *)e;
	}
	if (off != len) return "trailing bytes";
	u32 n = envc;
	if (!have_path) job_envp[n++] = "PATH=" DEFAULT_PATH;
	if (!have_home) job_envp[n++] = "HOME=/root";
	job_envp[n] = 0;
	return 0;
}

/* Mixes the host's seed into the guest RNG. */
static void seed_rng(void)
{
	if (!g.seed_len) return;
	long fd = SC3(NR_open, "/dev/urandom", O_WRONLY | O_CLOEXEC, 0);
	if (fd < 0) return;
	memcpy(rnd.buf, g.seed, g.seed_len);
	rnd.count = (int)(g.seed_len * 8);
	rnd.size = (int)g.seed_len;
	/* Crediting entropy is only for the guest: with --unix, just mix it in. */
	if (g.unix_mode || SC3(NR_ioctl, fd, RNDADDENTROPY, &rnd) < 0) SC3(NR_write, fd, rnd.buf, g.seed_len);
	/* Once ready, the kernel's CRNG rekeys from the input pool only every 60 s
	 * (Linux 6.1): without this, the clones of one snapshot would all read the
	 * same /dev/urandom bytes until then. Errors are ignored (ENODATA: the CRNG
	 * is not ready yet, and then it is seeded from the pool anyway). */
	if (!g.unix_mode) SC3(NR_ioctl, fd, RNDRESEEDCRNG, 0);
	SC1(NR_close, fd);
}

/* The host's wall clock (a VM restored from a snapshot has the clock of the
 * moment it was taken). Only as PID 1: a --unix agent leaves the host alone. */
static void set_clock(void)
{
	if (!(g.flags & JOB_CLOCK) || !is_pid1()) return;
	struct timespec ts = { (long)(g.wall_ns / 1000000000UL), (long)(g.wall_ns % 1000000000UL) };
	SC2(NR_clock_settime, CLOCK_REALTIME, &ts); /* failure ignored */
}

struct child_args { int in, out, err; };

/* "swiftlet: a b c d\n" on the job's stderr, in one write when it fits. */
static void child_put(const char *a, const char *b, const char *c, const char *d)
{
	char m[512];
	const char *parts[] = { "swiftlet: ", a, b, c, d, "\n" };
	u64 n = 0, total = 0;
	for (int i = 0; i < 6; i++) total += slen(parts[i]);
	if (total > sizeof m) {
		for (int i = 0; i < 6; i++) put(2, parts[i]);
		return;
	}
	for (int i = 0; i < 6; i++)
		for (const char *q = parts[i]; *q; q++) m[n++] = *q;
	write_all(2, m, n);
}

/* An fd the child must move to 0-2 but that sits there already (the agent was
 * started with some of 0-2 closed): copy it out of the way first. */
static int out_of_the_way(int fd)
{
	return fd >= 0 && fd < 3 ? (int)SC3(NR_fcntl, fd, F_DUPFD_CLOEXEC, 3) : fd;
}

/* dup2 that also works when the fd is already in place (then clear CLOEXEC). */
static void move_fd(int from, int to)
{
	if (from == to) SC3(NR_fcntl, to, F_SETFD, 0);
	else SC3(NR_dup3, from, to, 0);
}

/* Tries execve(file), with the `sh FILE args` fallback for scripts without #!. */
static long try_exec(const char *file)
{
	/* A PATH entry without the file is ruled out by a path walk: a failed
	 * execve costs much more (Linux builds the new mm before it opens the
	 * file), which the guest kernel pays for each PATH entry before the
	 * right one (about 50 ms each where it runs emulated). */
	long r = sc(NR_faccessat, AT_FDCWD, (long)file, X_OK, 0, 0, 0);
	if (r == -ENOENT || r == -ENOTDIR) return r;
	r = SC3(NR_execve, file, job_argv + 1, job_envp);
	if (r == -ENOEXEC) {
		char *saved = job_argv[1];
		job_argv[0] = "sh";
		job_argv[1] = (char *)file;
		SC3(NR_execve, "/bin/sh", job_argv, job_envp);
		job_argv[1] = saved;
	}
	return r;
}

/* The job's process, on child_stack, sharing memory with the (suspended) agent
 * until it calls execve. It only touches its own stack. */
static __attribute__((noreturn, used)) void child_main(void *arg)
{
	struct child_args *c = arg;
	u64 empty = 0;
	SC4(NR_rt_sigprocmask, SIG_SETMASK, &empty, 0, 8);
	SC0(NR_setsid);
	int in = out_of_the_way(c->in), out = out_of_the_way(c->out), err_fd = out_of_the_way(c->err);
	if (in < 0) in = (int)SC3(NR_open, "/dev/null", O_RDONLY, 0);
	if (in >= 0) move_fd(in, 0);
	move_fd(out, 1);
	move_fd(err_fd, 2);
	/* The job's user, in this order: groups and gid need the privilege that
	 * setuid gives up. */
	if (g.flags & JOB_CREDS) {
		long r = SC2(NR_setgroups, g.ngroups, job_groups);
		if (r >= 0) r = SC1(NR_setgid, g.gid);
		if (r >= 0) r = SC1(NR_setuid, g.uid);
		if (r < 0) {
			char u[24], gb[24], ids[48];
			const char *us = swl_fmt_num(u, g.uid), *gs = swl_fmt_num(gb, g.gid);
			u64 n = slen(us);
			memcpy(ids, us, n);
			ids[n] = ':';
			memcpy(ids + n + 1, gs, slen(gs) + 1);
			child_put("cannot set user ", ids, ": ", errstr(-r));
			exit_(126);
		}
	}
	/* The agent started by init already is in "/": skip that chdir. */
	long r = g.unix_mode || !g.in_root ? SC1(NR_chdir, g.workdir) : 0;
	if (r < 0) {
		child_put("cannot enter ", g.workdir, ": ", errstr(-r));
		exit_(126);
	}
	const char *name = job_argv[1];
	long err = -ENOENT;
	int seen_eacces = 0;
	const char *q = name;
	while (*q && *q != '/') q++;
	if (*q) {
		err = try_exec(name);
	} else {
		u64 nlen = slen(name);
		char buf[MAX_DIR + 256 + 2];
		const char *d = g.path;
		for (;;) {
			const char *e = d;
			while (*e && *e != ':') e++;
			u64 dl = (u64)(e - d);
			if (dl + 1 + nlen < sizeof buf) {
				if (dl) { memcpy(buf, d, dl); buf[dl++] = '/'; }
				memcpy(buf + dl, name, nlen + 1);
				r = try_exec(buf);
				if (r == -EACCES) seen_eacces = 1;
				else if (r != -ENOENT && r != -ENOTDIR && r != -ENAMETOOLONG) { err = r; break; }
			}
			if (!*e) break;
			d = e + 1;
		}
		if (err == -ENOENT && seen_eacces) err = -EACCES;
	}
	if (err == -ENOENT || err == -ENOTDIR) {
		child_put(name, ": command not found", "", "");
		exit_(127);
	}
	child_put(name, ": ", errstr(-err), "");
	exit_(126);
}

long swl_clone_vfork(void (*fn)(void *), void *arg, void *stack_top);
/* clone(CLONE_VM | CLONE_VFORK | SIGCHLD) running fn(arg) on stack_top in the
 * child; returns the child's pid (after it exec'd or exited) or -errno. */
__asm__(".text\n.global swl_clone_vfork\n.type swl_clone_vfork,@function\nswl_clone_vfork:\n"
	"\tand $-16, %rdx\n\tsub $16, %rdx\n\tmov %rdi, (%rdx)\n\tmov %rsi, 8(%rdx)\n"
	"\tmov $0x4111, %edi\n\tmov %rdx, %rsi\n\txor %edx, %edx\n\txor %r10d, %r10d\n"
	"\txor %r8d, %r8d\n\tmov $56, %eax\n\tsyscall\n\ttest %rax, %rax\n\tjnz 1f\n"
	"\tpop %rax\n\tpop %rdi\n\txor %ebp, %ebp\n\tcall *%rax\n"
	"\tmov $127, %edi\n\tmov $231, %eax\n\tsyscall\n\thlt\n1:\tret\n");

static void start_job(const u8 *p, u32 len)
{
	const char *malformed = parse_job(p, len);
	if (malformed) fail("malformed JOB", malformed);
	set_clock();
	seed_rng();
	int out[2], err[2], in[2] = { -1, -1 };
	long r = SC2(NR_pipe2, out, O_CLOEXEC);
	if (r >= 0) r = SC2(NR_pipe2, err, O_CLOEXEC);
	if (r >= 0 && (g.flags & JOB_STDIN)) {
		r = SC2(NR_pipe2, in, O_CLOEXEC);
		if (r >= 0) SC3(NR_fcntl, in[1], F_SETFL, O_NONBLOCK); /* never block the loop */
	}
	if (r < 0) fail("cannot create pipes", errstr(-r));
	struct child_args c = { in[0], out[1], err[1] };
	u64 t_fork = now_ns();
	long pid = swl_clone_vfork(child_main, &c, child_stack + sizeof child_stack);
	if (pid < 0) fail("fork failed", errstr(-pid));
	g.started = 1;
	g.pid = pid;
	SC1(NR_close, out[1]);
	SC1(NR_close, err[1]);
	if (in[0] >= 0) SC1(NR_close, in[0]);
	g.out_fd = out[0];
	g.err_fd = err[0];
	g.in_fd = in[1];
	u8 s[16];
	wr32(s, (u32)pid);
	wr32(s + 4, 0);
	wr64(s + 8, t_fork);
	send_or_die(T_STARTED, s, sizeof s);
}

static void close_stdin(void)
{
	if (g.in_fd >= 0) SC1(NR_close, g.in_fd);
	g.in_fd = -1;
	g.pending = 0;
	g.pending_len = 0;
}

/* Moves pending STDIN bytes into the job's pipe, as far as it takes them. */
static void flush_stdin(void)
{
	while (g.pending_len) {
		long r = SC3(NR_write, g.in_fd, g.pending, g.pending_len);
		if (r == -EINTR) continue;
		if (r == -EAGAIN) return;
		if (r <= 0) { close_stdin(); return; } /* EPIPE: the job closed its stdin */
		g.pending += r;
		g.pending_len -= (u64)r;
	}
	g.pending = 0;
}

/* A warm-up program's process: its own session and process group (so that
 * killing the group at the time limit reaches its children), no blocked
 * signals, stdio on /dev/null, then exec. */
static void warm_child(void *arg)
{
	const char *path = arg;
	u64 empty = 0;
	SC4(NR_rt_sigprocmask, SIG_SETMASK, &empty, 0, 8);
	SC0(NR_setsid);
	long n = SC3(NR_open, "/dev/null", O_RDWR, 0);
	for (int fd = 0; fd < 3; fd++) if (n >= 0 && n != fd) SC3(NR_dup3, n, fd, 0);
	char *argv[] = { (char *)path, 0 };
	static char *envp[] = { "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", 0 };
	SC3(NR_execve, path, argv, envp);
	exit_(127);
}

/* Waits for the warm-up program `pid` to exit, at most WARM_LIMIT_MS (it may
 * be a server that never does): then SIGKILL to it and to its process group,
 * and it is reaped. Orphans it leaves are reaped by the main loop as usual
 * (the SIGCHLD stays queued on the signalfd). */
static void warm_wait(long pid)
{
	int st;
	u64 deadline = now_ns() + WARM_LIMIT_MS * 1000000UL;
	long pfd = SC2(NR_pidfd_open, pid, 0); /* readable once it exited; Linux 5.3+ */
	for (;;) {
		long r = sc(NR_wait4, pid, (long)&st, WNOHANG, 0, 0, 0);
		if (r == pid || (r < 0 && r != -EINTR)) break;
		u64 t = now_ns();
		if (t >= deadline) {
			SC2(NR_kill, -pid, SIGKILL);
			SC2(NR_kill, pid, SIGKILL); /* should setsid have failed */
			while (sc(NR_wait4, pid, (long)&st, 0, 0, 0, 0) == -EINTR) {}
			break;
		}
		u32 ms = (u32)((deadline - t + 999999) / 1000000);
		if (pfd >= 0) {
			struct pollfd p = { (int)pfd, POLLIN, 0 };
			SC3(NR_poll, &p, 1, ms);
		} else {
			sleep_ms(ms < 10 ? ms : 10); /* no pidfd: look again every 10 ms */
		}
	}
	if (pfd >= 0) SC1(NR_close, pfd);
}

/* PARK: the host is about to snapshot this VM. Run each program the payload
 * names once (absolute paths, NUL-terminated, no arguments), so that what a
 * job's first exec needs (the binary's pages, dentries, page tables) is warm
 * in every clone; then report PARKED (with the guest's CLOCK_MONOTONIC) and
 * wait for the JOB like before. Each gets WARM_LIMIT_MS (warm_wait). */
static void park(const u8 *p, u32 len)
{
	u32 off = 0;
	for (int i = 0; i < MAX_WARM && off < len; i++) {
		const char *path = next_str(p, len, &off, MAX_DIR);
		if (!path || path[0] != '/') break;
		long pid = swl_clone_vfork(warm_child, (void *)path, child_stack + sizeof child_stack);
		if (pid < 0) break;
		warm_wait(pid);
	}
	u8 t[8];
	wr64(t, now_ns());
	send_or_die(T_PARKED, t, sizeof t);
}

static void handle_frame(int type, const u8 *p, u32 len)
{
	switch (type) {
	case T_PARK:
		if (!g.started) park(p, len);
		break;
	case T_JOB:
		if (!g.started) start_job(p, len);
		break;
	case T_STDIN:
		if (g.in_fd < 0) break;
		if (!len) { close_stdin(); break; }
		g.pending = p;
		g.pending_len = len;
		flush_stdin();
		break;
	case T_SIGNAL:
		if (len == 4 && g.started) {
			u32 sig = le32(p);
			if (sig >= 1 && sig <= 64) SC2(NR_kill, -g.pid, sig);
		}
		break;
	case T_CLOSE_OUTPUT:
		/* Nobody reads this stream on the host any more: close our end, so
		 * the job's next write gets SIGPIPE, as in a local pipeline. */
		if (len == 4 && g.started) {
			u32 which = le32(p);
			if (which == 1 && g.out_fd >= 0) {
				SC1(NR_close, g.out_fd);
				pipe_eof(&g.out_fd, T_STDOUT, &g.out_eof);
			} else if (which == 2 && g.err_fd >= 0) {
				SC1(NR_close, g.err_fd);
				pipe_eof(&g.err_fd, T_STDERR, &g.err_eof);
			}
		}
		break;
	default:
		break; /* unknown types are skipped */
	}
}

/* The frame at h, of which avail bytes have arrived: 1 when it is complete
 * (its payload length in *len), 0 while more bytes are needed, -1 when its
 * header breaks the protocol (*why says how). Reads only h[0..avail). */
static int frame_header(const u8 *h, u64 avail, u32 *len, const char **why)
{
	if (avail < 8) return 0;
	u32 n = le32(h);
	if (n > MAX_FRAME) { *why = "frame longer than 1 MiB"; return -1; }
	if (h[5] | h[6] | h[7]) { *why = "reserved header bytes not zero"; return -1; }
	if (avail < 8 + (u64)n) return 0;
	*len = n;
	return 1;
}

/* Handles the complete frames in rx, until STDIN data is left pending. */
static void process_rx(void)
{
	while (!g.pending_len) {
		const u8 *h = rx + g.rx_start;
		u32 len = 0;
		const char *why = 0;
		int r = frame_header(h, g.rx_end - g.rx_start, &len, &why);
		if (r < 0) fail("protocol error", why);
		if (r == 0) break;
		g.rx_start += 8 + (u64)len;
		handle_frame(h[4], h + 8, len);
	}
}

/* Reads what the host sent. Returns 0, or -1 when the connection is gone. */
static int read_host(void)
{
	if (g.rx_start == g.rx_end) g.rx_start = g.rx_end = 0;
	else if (g.rx_start) { /* pending is empty here: nothing points into rx */
		memmove(rx, rx + g.rx_start, g.rx_end - g.rx_start);
		g.rx_end -= g.rx_start;
		g.rx_start = 0;
	}
	long r = SC3(NR_read, g.sock, rx + g.rx_end, sizeof rx - g.rx_end);
	if (r == -EINTR || r == -EAGAIN) return 0;
	if (r <= 0) return -1;
	g.rx_end += (u64)r;
	process_rx();
	return 0;
}

static void pipe_eof(int *fd, int type, int *eof)
{
	*fd = -1; /* no longer polled (left open: closing costs a syscall, for nothing) */
	*eof = 1;
	g.eof_queued |= type == T_STDOUT ? 1 : 2; /* sent before the next wait, or with EXIT */
}

/* Forwards what the pipe holds as STDOUT/STDERR frames; at EOF, the empty frame.
 * POLLHUP on a pipe means no writer is left: then a short read (or no POLLIN
 * at all) is the end, without one more read to see it. */
static void pump(int *fd, int type, int *eof, int *big, short revents)
{
	if ((revents & POLLHUP) && !(revents & POLLIN)) {
		pipe_eof(fd, type, eof);
		return;
	}
	struct iovec iov[TX_SEGS];
	for (int i = 0; i < TX_SEGS; i++) {
		iov[i].base = tx + i * (8 + MAX_CHUNK) + 8;
		iov[i].len = MAX_CHUNK;
	}
	long n = SC3(NR_readv, *fd, iov, TX_SEGS);
	if (n == -EINTR || n == -EAGAIN) return;
	if (n <= 0) {
		pipe_eof(fd, type, eof);
		return;
	}
	/* A full default-size pipe: bulk output, worth fewer, bigger reads. */
	if (n >= (long)MAX_CHUNK && !*big) {
		*big = 1;
		SC3(NR_fcntl, *fd, F_SETPIPE_SZ, TX_SEGS * MAX_CHUNK);
	}
	u64 left = (u64)n, total = 0;
	for (int i = 0; left; i++) {
		u32 c = left > MAX_CHUNK ? MAX_CHUNK : (u32)left;
		u8 *h = tx + i * (8 + MAX_CHUNK);
		wr32(h, c);
		h[4] = (u8)type;
		h[5] = h[6] = h[7] = 0;
		total += 8 + c;
		left -= c;
	}
	if (write_all(g.sock, tx, total) < 0) conn_lost();
	if ((revents & POLLHUP) && n < (long)(TX_SEGS * MAX_CHUNK)) pipe_eof(fd, type, eof);
}

static void reap(void)
{
	for (;;) {
		int st;
		long r = sc(NR_wait4, -1, (long)&st, WNOHANG, 0, 0, 0);
		if (r <= 0) return;
		if (g.started && r == g.pid && !g.reaped) {
			g.reaped = 1;
			g.status = st;
			g.t_end = now_ns();
			return; /* we are about to finish: other zombies do not matter */
		}
	}
}

static void handle_signals(void)
{
	struct siginfo_fd si[4];
	long n = SC3(NR_read, g.sigfd, si, sizeof si);
	for (long i = 0; i < n / (long)sizeof si[0]; i++) {
		u32 sig = si[i].signo;
		if (sig == SIGCHLD) reap();
		else if (g.started) SC2(NR_kill, -g.pid, sig);
		else if (!is_pid1()) exit_(128 + (int)sig); /* a host process can be stopped */
	}
}

/* The queued empty STDOUT/STDERR frames, in one write. */
static void send_eofs(void)
{
	if (!g.eof_queued) return;
	u8 f[16], *q = f;
	memset(f, 0, sizeof f);
	if (g.eof_queued & 1) { q[4] = T_STDOUT; q += 8; }
	if (g.eof_queued & 2) { q[4] = T_STDERR; q += 8; }
	g.eof_queued = 0;
	if (write_all(g.sock, f, (u64)(q - f)) < 0) conn_lost();
}

/* The main loop: before the JOB, waits for it (reconnecting if the connection
 * drops); then runs the job until it exited and its output is forwarded. */
static void job_loop(void)
{
	int drain_rounds = 0;
	for (;;) {
		if (g.started && g.reaped && g.out_fd < 0 && g.err_fd < 0) return;
		struct pollfd p[5] = {
			{ g.sock, g.pending_len ? 0 : POLLIN, 0 },
			{ g.sigfd, POLLIN, 0 },
			{ g.out_fd, POLLIN, 0 },
			{ g.err_fd, POLLIN, 0 },
			{ g.pending_len ? g.in_fd : -1, POLLOUT, 0 },
		};
		/* Once the job has been reaped, drain what is readable, without
		 * waiting for background processes that inherited the pipes. */
		int draining = g.reaped;
		/* Queued EOF frames go out before waiting, as the job may still run a
		 * while; once both streams ended, it is about to exit: they go with EXIT. */
		if (!draining && !(g.out_eof && g.err_eof)) send_eofs();
		long r = SC3(NR_poll, p, 5, draining ? 0 : -1);
		if (r == -EINTR) continue;
		if (r < 0) fail("poll", errstr(-r));
		if (draining && (!(p[2].revents | p[3].revents) || ++drain_rounds > 64)) {
			g.out_fd = g.err_fd = -1;
			return;
		}
		if (p[1].revents) handle_signals();
		if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) pump(&g.out_fd, T_STDOUT, &g.out_eof, &g.out_big, p[2].revents);
		if (p[3].revents & (POLLIN | POLLHUP | POLLERR)) pump(&g.err_fd, T_STDERR, &g.err_eof, &g.err_big, p[3].revents);
		if (p[4].revents & (POLLOUT | POLLHUP | POLLERR)) {
			flush_stdin();
			process_rx(); /* frames that waited behind the pending data */
		}
		short ev = p[0].revents;
		int lost = 0;
		if (ev & POLLIN) lost = read_host() < 0;
		else if (ev & (POLLHUP | POLLERR | POLLNVAL)) lost = 1;
		if (lost) {
			if (g.started) conn_lost();
			/* Before a JOB: reconnect (e.g. a vsock reset after a snapshot restore). */
			SC1(NR_close, g.sock);
			g.sock = -1;
			g.rx_start = g.rx_end = 0;
			connect_host();
		}
	}
}

/* Signals arrive through a signalfd. Blocked signals are queued even for PID 1
 * (which otherwise ignores signals it has no handler for). SIGPIPE stays
 * blocked: writes report EPIPE instead. Done after the first HELLO, while the
 * host answers; until then a signal does what it does by default (nothing to
 * PID 1; it ends a --unix agent). */
static void setup_signals(void)
{
	if (g.sigfd >= 0) return;
	/* What a job expects of a Linux system that init left out: /proc and a
	 * hostname. Done here, after HELLO, while the host prepares the JOB. */
	if (is_pid1()) {
		static const char hostname[] = SWL_HOSTNAME;
		/* In image mode init mounted it (again here: EBUSY, harmless). */
		if (!g.image) sc(NR_mount, (long)"proc", (long)"/proc", (long)"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0, 0);
		SC2(NR_sethostname, hostname, sizeof hostname - 1);
	}
	u64 fdmask = 1UL << (SIGHUP - 1) | 1UL << (SIGINT - 1) | 1UL << (SIGTERM - 1) | 1UL << (SIGCHLD - 1);
	u64 mask = fdmask | 1UL << (SIGPIPE - 1);
	SC4(NR_rt_sigprocmask, SIG_BLOCK, &mask, 0, 8);
	long fd = SC4(NR_signalfd4, -1, &fdmask, 8, O_CLOEXEC);
	if (fd < 0) fail("signalfd", errstr(-fd));
	g.sigfd = (int)fd;
	/* With --unix, orphans come to us as they would to PID 1, so that path is tested too. */
	if (g.unix_mode) SC2(NR_prctl, PR_SET_CHILD_SUBREAPER, 1);
}

static void run_agent(char **envp)
{
	/* Every signal at its default: whoever started the agent may have
	 * ignored some (nohup ignores SIGHUP), an ignored disposition survives
	 * execve, and the job must start as a process init started would: a
	 * forwarded SIGHUP ends it, a reader that went away (CLOSE_OUTPUT) is
	 * SIGPIPE. Once per agent, not per job. */
	struct { u64 handler, flags, restorer, mask; } dfl = { 0, 0, 0, 0 };
	for (int sig = 1; sig < 32; sig++)
		if (sig != SIGKILL && sig != SIGSTOP) SC4(NR_rt_sigaction, sig, &dfl, 0, 8);

	g.sock = g.sigfd = g.out_fd = g.err_fd = g.in_fd = -1;
	g.cid = HOST_CID;
	g.port = DEFAULT_PORT;
	if (!g.unix_mode) {
		const char *v = swl_getenv(envp, "SWIFTLET_AGENT=");
		if (v && parse_u32(v, &g.port)) { put(2, "swiftlet-agent: bad SWIFTLET_AGENT, using 52\n"); g.port = DEFAULT_PORT; }
		v = swl_getenv(envp, "SWIFTLET_AGENT_CID=");
		if (v && parse_u32(v, &g.cid)) { put(2, "swiftlet-agent: bad SWIFTLET_AGENT_CID, using 2\n"); g.cid = HOST_CID; }
		g.image = swl_getenv(envp, "SWIFTLET_IMAGE=") != 0;
	}
	connect_host();
	job_loop();

	/* The job is done and its output forwarded: the EOF frames not sent yet
	 * and EXIT, in one write. */
	u8 f[8 + 8 + 8 + 16], *q = f;
	memset(f, 0, sizeof f);
	if (!g.out_eof || (g.eof_queued & 1)) { q[4] = T_STDOUT; q += 8; }
	if (!g.err_eof || (g.eof_queued & 2)) { q[4] = T_STDERR; q += 8; }
	int sig = g.status & 0x7f;
	wr32(q, 16);
	q[4] = T_EXIT;
	wr32(q + 8, sig ? 1 : 0);
	wr32(q + 12, sig ? (u32)sig : (u32)((g.status >> 8) & 0xff));
	wr64(q + 16, g.t_end);
	if (write_all(g.sock, f, (u64)(q + 24 - f)) < 0) conn_lost();
	/* Background processes the job left (powering off ends them anyway). */
	if (!is_pid1()) SC2(NR_kill, -g.pid, SIGKILL);
	finish(0);
}

/* ------------------------------------------------------------------------- */
/* swiftlet-vsock: a pipe between stdin/stdout and one stream connection.     */

static u8 up_buf[256 << 10] __attribute__((aligned(4096)));

static __attribute__((noreturn)) void vsock_usage(void)
{
	put(2, "usage: swiftlet-vsock listen PORT | connect CID PORT\n"
	       "       (tests: listen-unix PATH | connect-unix PATH)\n");
	exit_(2);
}

static __attribute__((noreturn)) void vsock_die(const char *what, const char *arg, long err)
{
	put(2, "swiftlet-vsock: ");
	put(2, what);
	if (arg) { put(2, " "); put(2, arg); }
	put(2, ": ");
	put(2, errstr(-err));
	put(2, "\n");
	exit_(1);
}

/* stdin -> conn (non-blocking, with a pending buffer) and conn -> stdout.
 * stdin EOF: shutdown(SHUT_WR). Exits when both directions are done. */
static __attribute__((noreturn)) void bridge(int c)
{
	int status = 0, in_done = 0, out_done = 0;
	u64 up_off = 0, up_len = 0;
	SC3(NR_fcntl, c, F_SETFL, SC3(NR_fcntl, c, F_GETFL, 0) | O_NONBLOCK);
	while (!in_done || !out_done) {
		struct pollfd p[2] = {
			{ in_done || up_len ? -1 : 0, POLLIN, 0 },
			{ c, (short)((out_done ? 0 : POLLIN) | (up_len ? POLLOUT : 0)), 0 },
		};
		long r = SC3(NR_poll, p, 2, -1);
		if (r == -EINTR) continue;
		if (r < 0) vsock_die("poll", 0, r);
		if (p[0].revents) {
			r = SC3(NR_read, 0, up_buf, sizeof up_buf);
			if (r > 0) { up_off = 0; up_len = (u64)r; }
			else if (r != -EINTR && r != -EAGAIN) {
				if (r < 0) status = 1;
				in_done = 1;
				SC2(NR_shutdown, c, SHUT_WR);
			}
		}
		if (up_len && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
			r = SC3(NR_write, c, up_buf + up_off, up_len);
			if (r > 0) {
				up_off += (u64)r;
				up_len -= (u64)r;
			} else if (r != -EAGAIN && r != -EINTR) {
				put(2, "swiftlet-vsock: write: ");
				put(2, errstr(-r));
				put(2, "\n");
				status = 1;
				up_len = 0;
				in_done = 1;
			}
		}
		if (out_done && !up_len && !in_done && (p[1].revents & (POLLHUP | POLLERR)))
			in_done = 1; /* the peer is gone altogether: nothing more can go out */
		if (!out_done && (p[1].revents & (POLLIN | POLLERR | POLLHUP))) {
			r = SC3(NR_read, c, tx, sizeof tx);
			if (r > 0) {
				if (write_all(1, tx, (u64)r) < 0) { status = 1; out_done = 1; }
			} else if (r != -EAGAIN && r != -EINTR) {
				if (r < 0) status = 1;
				out_done = 1;
			}
		}
	}
	exit_(status);
}

static __attribute__((noreturn)) void vsock_tool(int argc, char **argv)
{
	u64 mask = 1UL << (SIGPIPE - 1);
	SC4(NR_rt_sigprocmask, SIG_BLOCK, &mask, 0, 8);
	if (argc < 2) vsock_usage();
	const char *cmd = argv[0];
	int listen = 0, unix_ = 0;
	if (streq(cmd, "listen")) listen = 1;
	else if (streq(cmd, "listen-unix")) listen = unix_ = 1;
	else if (streq(cmd, "connect-unix")) unix_ = 1;
	else if (!streq(cmd, "connect")) vsock_usage();
	if (argc != (!listen && !unix_ ? 3 : 2)) vsock_usage();
	union { struct sockaddr_vm vm; struct sockaddr_un un; } a;
	memset(&a, 0, sizeof a);
	u32 alen;
	if (unix_) {
		u64 n = slen(argv[1]);
		if (n >= sizeof a.un.path) vsock_usage();
		a.un.family = AF_UNIX;
		memcpy(a.un.path, argv[1], n);
		alen = sizeof a.un;
	} else {
		a.vm.family = AF_VSOCK;
		a.vm.cid = VMADDR_CID_ANY;
		if (parse_u32(argv[listen ? 1 : 2], &a.vm.port)) vsock_usage();
		if (!listen && parse_u32(argv[1], &a.vm.cid)) vsock_usage();
		alen = sizeof a.vm;
	}
	long s = SC3(NR_socket, unix_ ? AF_UNIX : AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) vsock_die("socket", 0, s);
	const char *where = unix_ ? argv[1] : argv[listen ? 1 : 2];
	long r;
	if (listen) {
		if ((r = SC3(NR_bind, s, &a, alen)) < 0) vsock_die("bind", where, r);
		if ((r = SC2(NR_listen, s, 1)) < 0) vsock_die("listen", where, r);
		long c;
		do c = SC3(NR_accept, s, 0, 0);
		while (c == -EINTR);
		if (c < 0) vsock_die("accept", where, c);
		SC1(NR_close, s);
		bridge((int)c);
	}
	do r = SC3(NR_connect, s, &a, alen);
	while (r == -EINTR);
	if (r < 0) {
		char cp[48]; /* "CID:PORT" */
		u64 n = slen(argv[1]);
		if (!unix_ && n + 1 + slen(argv[2]) < sizeof cp) {
			memcpy(cp, argv[1], n);
			cp[n] = ':';
			memcpy(cp + n + 1, argv[2], slen(argv[2]) + 1);
			where = cp;
		}
		vsock_die("connect", where, r);
	}
	bridge((int)s);
}

/* ------------------------------------------------------------------------- */

#ifndef AGENT_FUZZ /* the fuzz harness has its own main (libFuzzer's) */
__attribute__((noreturn, used)) void start_c(long *sp) /* called from _start */
{
	g.t_start = now_ns();
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	const char *base = argc > 0 ? argv[0] : "";
	for (const char *q = base; *q; q++)
		if (*q == '/') base = q + 1;
	if (streq(base, "swiftlet-vsock")) vsock_tool(argc - 1, argv + 1);
	if (argc > 1 && streq(argv[1], "vsock")) vsock_tool(argc - 2, argv + 2);
	if (argc > 1 && streq(argv[1], "--unix")) {
		if (argc != 3 || slen(argv[2]) >= sizeof ((struct sockaddr_un *)0)->path) {
			put(2, "usage: swiftlet-agent [--unix PATH]\n");
			exit_(2);
		}
		g.unix_mode = 1;
		g.unix_path = argv[2];
	}
	/* Other arguments are ignored: as PID 1 the kernel may pass bare words such as `ro`. */
	run_agent(envp);
	exit_(0);
}

SWL_DEFINE_START
#endif
