/*
 * Native test harness for swiftlet-agent (run by ../test.sh).
 *
 *   harness AGENT TMPDIR
 *
 * Plays the host side of PROTOCOL.md over a Unix socket: for each test it
 * starts `AGENT --unix TMPDIR/sock`, accepts, checks HELLO and READY, sends a JOB (and
 * STDIN / SIGNAL frames), and checks every frame that comes back: STARTED
 * first, data chunks <= 64 KiB, one empty STDOUT/STDERR frame each, EXIT last,
 * then the agent's half-close; and the agent's own exit status.
 * Prints one line per failure, one summary line, and exits 1 on any failure.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum { T_HELLO = 1, T_STDOUT, T_STDERR, T_STARTED, T_EXIT, T_ERROR, T_READY, T_PARKED,
       T_JOB = 0x81, T_STDIN, T_SIGNAL, T_PARK, T_CLOSE_OUTPUT };
enum { F_STDIN = 1, F_CLOCK = 2, F_CREDS = 4 }; /* JOB flags */
#define MAX_CHUNK 65536
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *agent, *tmp;
static char sock_path[200];
static int failures, tests;
/* HARNESS_TIMEOUT_SCALE multiplies every timeout (for slow guests); HARNESS_STARTUP_RUNS. */
static int scale = 1, startup_runs = 31;
#define MS(x) ((x) * scale)
static const char *current;

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "FAIL [%s] ", current);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	failures++;
}

static uint64_t clock_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static uint64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }

/* ---- growable byte buffer ---- */
struct buf { uint8_t *p; size_t n, cap; };
static void buf_add(struct buf *b, const void *d, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p) abort();
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = 0;
}
static void buf_free(struct buf *b) { free(b->p); memset(b, 0, sizeof *b); }
static void add32(struct buf *b, uint32_t v) { uint8_t x[4]; put32(x, v); buf_add(b, x, 4); }
static void add64(struct buf *b, uint64_t v) { add32(b, (uint32_t)v); add32(b, (uint32_t)(v >> 32)); }
static void addstr(struct buf *b, const char *s) { buf_add(b, s, strlen(s) + 1); }

/* ---- socket I/O ---- */
static int listen_unix(void)
{
	unlink(sock_path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, sock_path);
	if (s < 0 || bind(s, (void *)&a, sizeof a) || listen(s, 4)) { perror("listen"); exit(2); }
	return s;
}

static int accept_timeout(int ls, int ms)
{
	struct pollfd p = { ls, POLLIN, 0 };
	if (poll(&p, 1, ms) != 1) return -1;
	return accept4(ls, 0, 0, SOCK_CLOEXEC);
}

/* Reads exactly n bytes; 0 ok, -1 EOF/error/timeout. */
static int read_full(int fd, void *d, size_t n, int ms)
{
	uint8_t *p = d;
	while (n) {
		struct pollfd pf = { fd, POLLIN, 0 };
		int r = poll(&pf, 1, ms);
		if (r <= 0) return -1;
		ssize_t k = read(fd, p, n);
		if (k <= 0) return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int write_full(int fd, const void *d, size_t n)
{
	const uint8_t *p = d;
	while (n) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR) continue;
		if (k <= 0) return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int send_frame(int fd, int type, const void *p, uint32_t n)
{
	uint8_t h[8] = { 0 };
	put32(h, n);
	h[4] = (uint8_t)type;
	if (write_full(fd, h, 8)) return -1;
	return n ? write_full(fd, p, n) : 0;
}

/* Reads one frame into *b (reset first). Returns its type, or -1 (EOF/timeout). */
static int read_frame(int fd, struct buf *b, int ms)
{
	uint8_t h[8];
	b->n = 0;
	if (read_full(fd, h, 8, ms)) return -1;
	uint32_t n = le32(h);
	if (n > (1u << 20)) { fail("frame of %u bytes", n); return -1; }
	if (h[5] | h[6] | h[7]) fail("reserved header bytes set");
	buf_add(b, "", 0);
	if (n) {
		uint8_t *tmpb = malloc(n);
		if (read_full(fd, tmpb, n, ms)) { free(tmpb); return -1; }
		buf_add(b, tmpb, n);
		free(tmpb);
	}
	return h[4];
}

/* ---- agent processes ---- */
struct agent { pid_t pid; int ls, c, ready; uint64_t t_spawn, hello_start, hello_conn, t_hello, t_ready; long minflt; };

static long proc_minflt(pid_t pid)
{
	char path[64], line[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f) return -1;
	size_t n = fread(line, 1, sizeof line - 1, f);
	fclose(f);
	line[n] = 0;
	char *p = strrchr(line, ')');
	if (!p) return -1;
	/* after ") ": state ppid pgrp session tty tpgid flags minflt */
	long v[8];
	if (sscanf(p + 2, "%*c %ld %ld %ld %ld %ld %ld %ld", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]) != 7) return -1;
	return v[6];
}

/* Starts argv with its stderr appended to TMPDIR/agent.log (test.sh shows it on failure). */
static pid_t spawn(char *const argv[])
{
	pid_t pid;
	char log[512];
	snprintf(log, sizeof log, "%s/agent.log", tmp);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (posix_spawn(&pid, argv[0], &fa, 0, argv, environ)) { perror("posix_spawn"); exit(2); }
	posix_spawn_file_actions_destroy(&fa);
	return pid;
}

/* Reads the READY that follows HELLO on every connection. */
static int expect_ready(struct agent *a)
{
	struct buf b = { 0 };
	int t = read_frame(a->c, &b, MS(5000));
	a->t_ready = now_ns();
	if (t != T_READY || b.n) fail("expected READY after HELLO, got type %d, %zu bytes", t, b.n);
	else a->ready = 1;
	buf_free(&b);
	return a->ready ? 0 : -1;
}

/* Starts an agent and waits for its HELLO (and READY when wait_ready).
 * listen_first=0: the socket appears only later. */
static int agent_connect(struct agent *a, int listen_first, int wait_ready)
{
	memset(a, 0, sizeof *a);
	char *argv[] = { (char *)agent, "--unix", sock_path, 0 };
	if (listen_first) a->ls = listen_unix();
	else unlink(sock_path);
	a->t_spawn = now_ns();
	a->pid = spawn(argv);
	if (!listen_first) {
		usleep(100000);
		a->ls = listen_unix();
	}
	a->c = accept_timeout(a->ls, MS(5000));
	if (a->c < 0) { fail("agent did not connect"); return -1; }
	struct buf b = { 0 };
	int t = read_frame(a->c, &b, MS(5000));
	a->t_hello = now_ns();
	a->minflt = proc_minflt(a->pid);
	if (t != T_HELLO || b.n != 24 || le32(b.p) != 1 || le32(b.p + 4) != 0) {
		fail("bad HELLO (type %d, %zu bytes)", t, b.n);
		buf_free(&b);
		return -1;
	}
	a->hello_start = le64(b.p + 8);
	a->hello_conn = le64(b.p + 16);
	if (a->hello_start < a->t_spawn || a->hello_conn < a->hello_start || a->hello_conn > a->t_hello)
		fail("HELLO times out of order");
	buf_free(&b);
	return wait_ready ? expect_ready(a) : 0;
}

/* Waits for the agent process to exit; returns its wait status or -1 on timeout. */
static int agent_wait(struct agent *a, int ms)
{
	int st;
	for (int i = 0; i < ms / 10; i++) {
		pid_t r = waitpid(a->pid, &st, WNOHANG);
		if (r == a->pid) return st;
		usleep(10000);
	}
	kill(a->pid, SIGKILL);
	waitpid(a->pid, &st, 0);
	return -1;
}

static void agent_close(struct agent *a)
{
	if (a->c >= 0) close(a->c);
	if (a->ls >= 0) close(a->ls);
	a->c = a->ls = -1;
}

/* agent_connect; an agent that failed it is reaped and its sockets closed. */
static int agent_start_opt(struct agent *a, int listen_first, int wait_ready)
{
	int rc = agent_connect(a, listen_first, wait_ready);
	if (rc) {
		agent_wait(a, MS(1000));
		agent_close(a);
	}
	return rc;
}
static int agent_start(struct agent *a, int listen_first) { return agent_start_opt(a, listen_first, 1); }

/* Ends a session: closes its sockets, then the agent must exit with expect_status. */
static void agent_finish(struct agent *a, int expect_status)
{
	agent_close(a);
	int st = agent_wait(a, MS(5000));
	if (st == -1) fail("agent did not exit");
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != expect_status) fail("agent exit status 0x%x, expected %d", st, expect_status);
}

/* Is any live (non-zombie) process in group pgid? Reaps our zombies on the way. */
static int group_alive(pid_t pgid)
{
	while (waitpid(-1, 0, WNOHANG) > 0) {}
	DIR *d = opendir("/proc");
	struct dirent *e;
	int alive = 0;
	while ((e = readdir(d))) {
		char path[300], line[1024];
		if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
		snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f) continue;
		size_t n = fread(line, 1, sizeof line - 1, f);
		fclose(f);
		line[n] = 0;
		char *p = strrchr(line, ')');
		char st;
		long ppid, pgrp;
		if (p && sscanf(p + 2, "%c %ld %ld", &st, &ppid, &pgrp) == 3 && pgrp == pgid && st != 'Z') alive = 1;
	}
	closedir(d);
	return alive;
}

static int group_gone_within(pid_t pgid, int ms)
{
	for (int i = 0; i < ms / 20; i++) {
		if (!group_alive(pgid)) return 1;
		usleep(20000);
	}
	return 0;
}

/* ---- jobs ---- */
struct job {
	uint32_t flags;
	const char *dir;
	const char *const *argv;
	const char *const *env;
	const uint8_t *seed;
	uint32_t seed_len;
	uint32_t uid, gid, ngroups; /* with F_CREDS */
	const uint32_t *groups;
};

static void job_payload(struct buf *b, const struct job *j)
{
	uint32_t argc = 0, envc = 0;
	while (j->argv[argc]) argc++;
	while (j->env && j->env[envc]) envc++;
	add32(b, j->flags);
	add32(b, argc);
	add32(b, envc);
	add32(b, j->seed_len);
	if (j->flags & F_CLOCK) add64(b, clock_ns(CLOCK_REALTIME)); /* the real time: never changes a clock */
	if (j->flags & F_CREDS) {
		add32(b, j->uid);
		add32(b, j->gid);
		add32(b, j->ngroups);
		add32(b, 0);
		for (uint32_t i = 0; i < j->ngroups; i++) add32(b, j->groups[i]);
	}
	if (j->seed_len) buf_add(b, j->seed, j->seed_len);
	addstr(b, j->dir ? j->dir : "");
	for (uint32_t i = 0; i < argc; i++) addstr(b, j->argv[i]);
	for (uint32_t i = 0; i < envc; i++) addstr(b, j->env[i]);
}

struct result {
	int started, exited, errored;
	uint32_t pid, kind, code;
	struct buf out, err, error;
	uint64_t t_started, t_exit;
};

/* Sends j as the session's JOB frame. */
static void send_job(int fd, const struct job *j)
{
	struct buf p = { 0 };
	job_payload(&p, j);
	send_frame(fd, T_JOB, p.p, (uint32_t)p.n);
	buf_free(&p);
}

static void result_free(struct result *r) { buf_free(&r->out); buf_free(&r->err); buf_free(&r->error); }

enum { ACT_NONE, ACT_SIGNAL_FRAME, ACT_SIGNAL_AGENT, ACT_DROP, ACT_CLOSE_OUTPUT };

/* Reads frames until EXIT/ERROR and the agent's EOF, checking their order.
 * On STARTED, performs `act` (SIGNAL frame with `sig`, kill(agent, sig), or
 * closing the connection). */
static void collect(struct agent *a, struct result *r, int act, int sig, int ms)
{
	struct buf b = { 0 };
	int out_eof = 0, err_eof = 0;
	memset(r, 0, sizeof *r);
	for (;;) {
		int t = read_frame(a->c, &b, ms);
		if (t < 0) { fail("connection ended before EXIT/ERROR"); break; }
		if (r->exited || r->errored) { fail("frame type %d after EXIT/ERROR", t); break; }
		switch (t) {
		case T_READY: /* once per connection, before STARTED */
			if (a->ready || r->started || b.n) fail("READY repeated, after STARTED or not empty");
			a->ready = 1;
			break;
		case T_STARTED:
			if (r->started || b.n != 16) fail("bad or repeated STARTED");
			if (!a->ready) fail("STARTED before READY");
			r->started = 1;
			r->pid = le32(b.p);
			r->t_started = le64(b.p + 8);
			if (act == ACT_SIGNAL_FRAME) {
				uint8_t s[4];
				put32(s, (uint32_t)sig);
				usleep(100000);
				send_frame(a->c, T_SIGNAL, s, 4);
			} else if (act == ACT_SIGNAL_AGENT) {
				usleep(100000);
				kill(a->pid, sig);
			} else if (act == ACT_CLOSE_OUTPUT) { /* sig: the stream, 1 or 2 */
				uint8_t s[4];
				put32(s, (uint32_t)sig);
				usleep(100000);
				send_frame(a->c, T_CLOSE_OUTPUT, s, 4);
			} else if (act == ACT_DROP) {
				usleep(100000);
				buf_free(&b);
				return;
			}
			break;
		case T_STDOUT:
		case T_STDERR: {
			int *eof = t == T_STDOUT ? &out_eof : &err_eof;
			if (!r->started) fail("data before STARTED");
			if (*eof) fail("data after EOF on stream %d", t);
			if (b.n > MAX_CHUNK) fail("chunk of %zu bytes", b.n);
			if (!b.n) *eof = 1;
			else buf_add(t == T_STDOUT ? &r->out : &r->err, b.p, b.n);
			break;
		}
		case T_EXIT:
			if (!r->started || !out_eof || !err_eof) fail("EXIT before STARTED or before both EOFs");
			if (b.n != 16) fail("EXIT of %zu bytes", b.n);
			r->exited = 1;
			r->kind = le32(b.p);
			r->code = le32(b.p + 4);
			r->t_exit = le64(b.p + 8);
			if (r->t_exit < r->t_started) fail("EXIT time before STARTED time");
			break;
		case T_ERROR:
			r->errored = 1;
			buf_add(&r->error, b.p, b.n);
			break;
		default:
			fail("unknown frame type %d", t);
		}
		if (r->exited || r->errored) {
			/* nothing more: the agent half-closes */
			if (read_frame(a->c, &b, ms) != -1) fail("frame after EXIT/ERROR");
			break;
		}
	}
	buf_free(&b);
}

/* Runs one job in a fresh agent. expect_status: the agent's exit code (0 ok, 1 error). */
static void run(const struct job *j, struct result *r, int act, int sig, int expect_status)
{
	struct agent a;
	memset(r, 0, sizeof *r);
	if (agent_start(&a, 1)) return;
	send_job(a.c, j);
	collect(&a, r, act, sig, MS(20000));
	agent_finish(&a, expect_status);
}

static int expect_exit(struct result *r, uint32_t kind, uint32_t code)
{
	if (!r->exited) { fail("no EXIT%s%s", r->errored ? ", ERROR: " : "", r->errored ? (char *)r->error.p : ""); return 0; }
	if (r->kind != kind || r->code != code) {
		fail("EXIT %u,%u, expected %u,%u (stderr: %.200s)", r->kind, r->code, kind, code, r->err.p ? (char *)r->err.p : "");
		return 0;
	}
	return 1;
}

static void expect_text(struct buf *b, const char *want, const char *what)
{
	size_t n = strlen(want);
	if (b->n != n || (n && memcmp(b->p, want, n)))
		fail("%s: got \"%.300s\", expected \"%s\"", what, b->p ? (char *)b->p : "", want);
}

#define ARGV(...) ((const char *const[]){ __VA_ARGS__, 0 })

static void simple(const char *name, const char *const *argv, uint32_t kind, uint32_t code, const char *out, const char *err)
{
	current = name;
	tests++;
	struct job j = { .argv = argv };
	struct result r;
	run(&j, &r, ACT_NONE, 0, 0);
	expect_exit(&r, kind, code);
	if (out) expect_text(&r.out, out, "stdout");
	if (err) expect_text(&r.err, err, "stderr");
	result_free(&r);
}

static uint8_t *read_file(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f) { perror(path); exit(2); }
	fseek(f, 0, SEEK_END);
	*n = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc(*n + 1);
	if (fread(p, 1, *n, f) != *n) { perror(path); exit(2); }
	fclose(f);
	return p;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");
	if (!f) { perror(path); exit(2); }
	fputs(text, f);
	fclose(f);
	chmod(path, mode);
}

/* ---- STDIN ---- */
struct feeder { int fd; const uint8_t *data; size_t n; volatile int stop; int ok; };

static void *feed(void *arg)
{
	struct feeder *f = arg;
	/* A spread of frame sizes: 1 byte, odd sizes, 64 KiB, the 1 MiB maximum. */
	static const size_t sizes[] = { 1, 7, 4096, 65536, 1 << 20, 100000, 3, 250000 };
	size_t off = 0;
	int i = 0;
	f->ok = 1;
	while (off < f->n && !f->stop) {
		size_t k = sizes[i++ % 8];
		if (k > f->n - off) k = f->n - off;
		if (send_frame(f->fd, T_STDIN, f->data + off, (uint32_t)k)) { f->ok = 0; return 0; }
		off += k;
	}
	if (!f->stop && send_frame(f->fd, T_STDIN, "", 0)) f->ok = 0;
	return 0;
}

static void stdin_test(const char *name, uint32_t flags, const char *const *argv, const uint8_t *data, size_t n,
		       const uint8_t *want, size_t want_n)
{
	current = name;
	tests++;
	struct agent a;
	if (agent_start(&a, 1)) return;
	uint8_t seed[32];
	memset(seed, 0xa5, sizeof seed);
	struct job j = { .flags = F_STDIN | flags, .argv = argv, .seed = seed, .seed_len = flags & F_CLOCK ? 32 : 0 };
	send_job(a.c, &j);
	struct feeder f = { a.c, data, n, 0, 0 };
	pthread_t th;
	pthread_create(&th, 0, feed, &f);
	struct result r;
	collect(&a, &r, ACT_NONE, 0, MS(20000));
	f.stop = 1;
	/* the agent discards what still comes while it waits for us to close */
	pthread_join(th, 0);
	agent_finish(&a, 0);
	expect_exit(&r, 0, 0);
	if (r.out.n != want_n || memcmp(r.out.p, want, want_n)) fail("stdout differs: %zu bytes, expected %zu", r.out.n, want_n);
	result_free(&r);
}

/* ---- malformed input ---- */
static void malformed(const char *name, const void *frame, size_t n, const char *want)
{
	current = name;
	tests++;
	struct agent a;
	if (agent_start(&a, 1)) return;
	write_full(a.c, frame, n);
	struct buf b = { 0 };
	int t = read_frame(a.c, &b, MS(5000));
	if (t != T_ERROR) fail("got frame %d, expected ERROR", t);
	else if (!strstr((char *)b.p, want)) fail("ERROR \"%s\", expected \"%s\"", b.p, want);
	if (read_frame(a.c, &b, MS(5000)) != -1) fail("frame after ERROR");
	buf_free(&b);
	agent_finish(&a, 1);
}

static void bad_job(const char *name, uint32_t flags, uint32_t argc, uint32_t envc, uint32_t seed_len,
		    const void *rest, size_t rest_n, const char *want)
{
	struct buf b = { 0 };
	uint8_t h[8] = { 0 };
	h[4] = T_JOB;
	buf_add(&b, h, 8);
	add32(&b, flags);
	add32(&b, argc);
	add32(&b, envc);
	add32(&b, seed_len);
	buf_add(&b, rest, rest_n);
	put32(b.p, (uint32_t)(b.n - 8));
	malformed(name, b.p, b.n, want);
	buf_free(&b);
}

/* ---- the tests ---- */
static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

static void startup(void)
{
	current = "startup";
	tests++;
	int N = startup_runs;
	uint64_t exec_to_start[N], start_to_conn[N], spawn_to_hello[N], hello_to_ready[N], flt[N], job[N];
	for (int i = 0; i < N; i++) {
		struct agent a;
		if (agent_start(&a, 1)) return;
		hello_to_ready[i] = a.t_ready - a.t_hello;
		exec_to_start[i] = a.hello_start - a.t_spawn;
		start_to_conn[i] = a.hello_conn - a.hello_start;
		spawn_to_hello[i] = a.t_hello - a.t_spawn;
		flt[i] = (uint64_t)a.minflt;
		struct job j = { .argv = ARGV("/bin/true") };
		struct buf p = { 0 };
		job_payload(&p, &j);
		uint64_t t0 = now_ns();
		send_frame(a.c, T_JOB, p.p, (uint32_t)p.n);
		buf_free(&p);
		struct result r;
		collect(&a, &r, ACT_NONE, 0, MS(5000));
		job[i] = now_ns() - t0;
		expect_exit(&r, 0, 0);
		result_free(&r);
		agent_close(&a);
		agent_wait(&a, MS(5000));
	}
	qsort(exec_to_start, N, 8, cmp_u64);
	qsort(start_to_conn, N, 8, cmp_u64);
	qsort(spawn_to_hello, N, 8, cmp_u64);
	qsort(hello_to_ready, N, 8, cmp_u64);
	qsort(flt, N, 8, cmp_u64);
	qsort(job, N, 8, cmp_u64);
	printf("startup (median of %d): spawn->agent start %.1f us, start->connected %.1f us, "
	       "spawn->HELLO received %.1f us, HELLO->READY %.1f us; minor faults at HELLO %lu (min %lu, max %lu); "
	       "JOB /bin/true sent->EXIT received %.1f us\n",
	       N, exec_to_start[N / 2] / 1e3, start_to_conn[N / 2] / 1e3, spawn_to_hello[N / 2] / 1e3, hello_to_ready[N / 2] / 1e3,
	       (unsigned long)flt[N / 2], (unsigned long)flt[0], (unsigned long)flt[N - 1], job[N / 2] / 1e3);
}

int main(int argc, char **argv)
{
	if (argc != 3) { fprintf(stderr, "usage: harness AGENT TMPDIR\n"); return 2; }
	agent = argv[1];
	tmp = argv[2];
	snprintf(sock_path, sizeof sock_path, "%s/agent.sock", tmp);
	if (strlen(sock_path) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
		fprintf(stderr, "harness: %s: path too long for a Unix socket (set TMPDIR)\n", sock_path);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (getenv("HARNESS_TIMEOUT_SCALE")) scale = atoi(getenv("HARNESS_TIMEOUT_SCALE"));
	if (getenv("HARNESS_STARTUP_RUNS")) startup_runs = atoi(getenv("HARNESS_STARTUP_RUNS"));
	if (scale < 1) scale = 1;
	if (startup_runs < 1) startup_runs = 1;
	prctl(PR_SET_CHILD_SUBREAPER, 1); /* jobs orphaned by an exiting agent come to us */
	char path[512], path2[512], cmd[1200];

	/* exit statuses and signals */
	simple("exit 0", ARGV("true"), 0, 0, "", "");
	simple("exit 1", ARGV("false"), 0, 1, "", "");
	simple("exit 42", ARGV("sh", "-c", "exit 42"), 0, 42, "", "");
	simple("killed by SIGKILL", ARGV("sh", "-c", "kill -9 $$"), 1, 9, "", "");
	simple("stdout and stderr", ARGV("sh", "-c", "echo out; echo err >&2; echo out2"), 0, 0, "out\nout2\n", "err\n");
	simple("command not found", ARGV("no-such-command-xyz", "a"), 0, 127, "",
	       "swiftlet: no-such-command-xyz: command not found\n");
	simple("absolute path not found", ARGV("/no/such/file"), 0, 127, "", "swiftlet: /no/such/file: command not found\n");
	snprintf(path, sizeof path, "%s/noexec", tmp);
	write_file(path, "echo hi\n", 0644);
	snprintf(cmd, sizeof cmd, "swiftlet: %s: Permission denied\n", path);
	simple("not executable", ARGV(path), 0, 126, "", cmd);
	snprintf(cmd, sizeof cmd, "swiftlet: %s: Permission denied\n", tmp);
	simple("directory", ARGV(tmp), 0, 126, "", cmd);
	snprintf(path2, sizeof path2, "%s/script", tmp);
	write_file(path2, "echo script-ran \"$1\" \"$0\"\n", 0755);
	snprintf(cmd, sizeof cmd, "script-ran arg1 %s\n", path2);
	simple("script without #!", ARGV(path2, "arg1"), 0, 0, cmd, "");
	simple("stdin is /dev/null", ARGV("cat"), 0, 0, "", "");
	simple("only the job's status", ARGV("sh", "-c", "(exit 9) & exec sleep 0.3"), 0, 0, "", "");

	/* working directory and environment */
	{
		current = "environment";
		tests++;
		struct job j = { .argv = ARGV("env"), .env = ARGV("A=1", "B=two words", "C=") };
		struct result r;
		run(&j, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "A=1\nB=two words\nC=\nPATH=" DEFAULT_PATH "\nHOME=/root\n", "env");
		result_free(&r);

		current = "environment with PATH and HOME";
		tests++;
		struct job j2 = { .argv = ARGV("/usr/bin/env"), .env = ARGV("HOME=/x", "PATH=/bin") };
		run(&j2, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "HOME=/x\nPATH=/bin\n", "env");
		result_free(&r);

		current = "PATH from the job's environment";
		tests++;
		snprintf(path, sizeof path, "%s/bin", tmp);
		mkdir(path, 0755);
		snprintf(path2, sizeof path2, "%s/bin/hello-xyz", tmp);
		write_file(path2, "#!/bin/sh\necho hello from path\n", 0755);
		snprintf(cmd, sizeof cmd, "PATH=/nonexistent:%s", path);
		const char *env3[] = { cmd, 0 };
		struct job j3 = { .argv = ARGV("hello-xyz"), .env = env3 };
		run(&j3, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "hello from path\n", "stdout");
		result_free(&r);

		current = "working directory";
		tests++;
		struct job j4 = { .dir = tmp, .argv = ARGV("sh", "-c", "pwd; echo \"$HOME\"") };
		run(&j4, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		snprintf(cmd, sizeof cmd, "%s\n/root\n", tmp);
		expect_text(&r.out, cmd, "stdout");
		result_free(&r);

		current = "empty working directory is /";
		tests++;
		struct job j5 = { .argv = ARGV("pwd") };
		run(&j5, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "/\n", "stdout");
		result_free(&r);

		current = "missing working directory";
		tests++;
		struct job j6 = { .dir = "/no/such/dir", .argv = ARGV("true") };
		run(&j6, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 126);
		expect_text(&r.err, "swiftlet: cannot enter /no/such/dir: No such file or directory\n", "stderr");
		result_free(&r);

		current = "seed";
		tests++;
		uint8_t seed[512];
		for (int i = 0; i < 512; i++) seed[i] = (uint8_t)i;
		struct job j7 = { .argv = ARGV("true"), .seed = seed, .seed_len = 512 };
		run(&j7, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		result_free(&r);

		/* flag bit 1: 8 bytes of wall clock before the seed (not set with --unix);
		 * a seed or strings read from the wrong offset would make the JOB malformed */
		current = "wall clock and seed";
		tests++;
		struct job j8 = { .flags = F_CLOCK, .dir = tmp, .argv = ARGV("sh", "-c", "echo \"$1\" \"$X\"; pwd", "sh", "arg one"),
				  .env = ARGV("X=y"), .seed = seed, .seed_len = 512 };
		run(&j8, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		snprintf(cmd, sizeof cmd, "arg one y\n%s\n", tmp);
		expect_text(&r.out, cmd, "stdout");
		result_free(&r);

		current = "wall clock without a seed";
		tests++;
		struct job j9 = { .flags = F_CLOCK, .argv = ARGV("echo", "clock") };
		run(&j9, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "clock\n", "stdout");
		result_free(&r);
	}

	/* flag bit 2: the job's uid, gid and supplementary groups (the agent must
	 * be root to change them: skipped otherwise) */
	if (geteuid() == 0) {
		struct result r;
		static const uint32_t nobody_groups[] = { 65534, 100 };
		current = "credentials: uid, gid and groups";
		tests++;
		struct job j = { .flags = F_CREDS, .argv = ARGV("sh", "-c", "id -u; id -g; id -G"),
				 .uid = 65534, .gid = 65534, .ngroups = 2, .groups = nobody_groups };
		run(&j, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "65534\n65534\n65534 100\n", "stdout");
		result_free(&r);

		current = "credentials without supplementary groups";
		tests++;
		struct job j2 = { .flags = F_CREDS, .argv = ARGV("sh", "-c", "id -u; id -G"), .uid = 1000, .gid = 1001 };
		run(&j2, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "1000\n1001\n", "stdout");
		result_free(&r);

		/* the credentials sit between the wall clock and the seed; 64 groups, the most */
		current = "credentials with the wall clock, a seed, stdin and 64 groups";
		tests++;
		uint32_t many[64];
		for (int i = 0; i < 64; i++) many[i] = 2000 + (uint32_t)i;
		uint8_t seed[512];
		memset(seed, 0x5a, sizeof seed);
		struct job j3 = { .flags = F_STDIN | F_CLOCK | F_CREDS, .argv = ARGV("sh", "-c", "id -u; id -G | wc -w; cat"),
				  .uid = 1234, .gid = 5678, .ngroups = 64, .groups = many, .seed = seed, .seed_len = 512 };
		struct agent a;
		if (!agent_start(&a, 1)) {
			send_job(a.c, &j3);
			send_frame(a.c, T_STDIN, "in\n", 3);
			send_frame(a.c, T_STDIN, "", 0);
			collect(&a, &r, ACT_NONE, 0, MS(5000));
			expect_exit(&r, 0, 0);
			expect_text(&r.out, "1234\n65\nin\n", "stdout"); /* the gid and the 64 groups */
			result_free(&r);
			agent_finish(&a, 0);
		}

		/* set before the working directory is entered: TMPDIR (0700, root's) is closed to nobody */
		struct stat sb;
		if (!stat(tmp, &sb) && !(sb.st_mode & 01)) {
			current = "credentials apply before the working directory";
			tests++;
			struct job j4 = { .flags = F_CREDS, .dir = tmp, .argv = ARGV("true"), .uid = 65534, .gid = 65534 };
			run(&j4, &r, ACT_NONE, 0, 0);
			expect_exit(&r, 0, 126);
			snprintf(cmd, sizeof cmd, "swiftlet: cannot enter %s: Permission denied\n", tmp);
			expect_text(&r.err, cmd, "stderr");
			result_free(&r);
		}

		current = "credentials that cannot be set";
		tests++;
		struct job j5 = { .flags = F_CREDS, .argv = ARGV("true"), .uid = 1000, .gid = 0xffffffff };
		run(&j5, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 126);
		expect_text(&r.err, "swiftlet: cannot set user 1000:4294967295: Invalid argument\n", "stderr");
		result_free(&r);
	} else {
		printf("agent tests: not root: the credentials tests are skipped\n");
	}

	/* byte-exact output, stdout and stderr interleaved */
	snprintf(path, sizeof path, "%s/ten", tmp);
	snprintf(path2, sizeof path2, "%s/three", tmp);
	size_t n10, n3;
	uint8_t *d10 = read_file(path, &n10), *d3 = read_file(path2, &n3);
	{
		current = "stdout (ten) + stderr (three), concurrently";
		tests++;
		struct job j = { .argv = ARGV("sh", "-c", "cat \"$1\" & cat \"$2\" >&2; wait", "sh", path, path2) };
		struct result r;
		run(&j, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		if (r.out.n != n10 || memcmp(r.out.p, d10, n10)) fail("stdout differs (%zu bytes)", r.out.n);
		if (r.err.n != n3 || memcmp(r.err.p, d3, n3)) fail("stderr differs (%zu bytes)", r.err.n);
		result_free(&r);
	}
	stdin_test("stdin (ten) through cat", 0, ARGV("cat"), d10, n10, d10, n10);
	stdin_test("stdin closed early by the job", 0, ARGV("head", "-c", "5"), d10, n10, d10, 5);
	stdin_test("empty stdin", 0, ARGV("cat"), d10, 0, d10, 0);
	stdin_test("stdin with the wall clock and a seed", F_CLOCK, ARGV("cat"), d3, n3, d3, n3);

	/* signals */
	{
		struct result r;
		struct job j = { .argv = ARGV("sleep", "60") };
		current = "SIGNAL frame SIGTERM";
		tests++;
		run(&j, &r, ACT_SIGNAL_FRAME, SIGTERM, 0);
		expect_exit(&r, 1, 15);
		result_free(&r);

		current = "SIGNAL frame to the process group";
		tests++;
		struct job j2 = { .argv = ARGV("sh", "-c", "sleep 60; echo never") };
		run(&j2, &r, ACT_SIGNAL_FRAME, SIGINT, 0);
		expect_exit(&r, 1, 2);
		expect_text(&r.out, "", "stdout");
		result_free(&r);

		current = "SIGTERM to the agent is forwarded";
		tests++;
		run(&j, &r, ACT_SIGNAL_AGENT, SIGTERM, 0);
		expect_exit(&r, 1, 15);
		result_free(&r);

		current = "SIGHUP to the agent is forwarded";
		tests++;
		run(&j, &r, ACT_SIGNAL_AGENT, SIGHUP, 0);
		expect_exit(&r, 1, 1);
		result_free(&r);
	}

	/* CLOSE_OUTPUT: the host's reader went away; the job gets SIGPIPE */
	{
		struct result r;
		struct job j = { .argv = ARGV("yes") };
		current = "CLOSE_OUTPUT stdout: the job dies of SIGPIPE";
		tests++;
		run(&j, &r, ACT_CLOSE_OUTPUT, 1, 0);
		expect_exit(&r, 1, SIGPIPE);
		result_free(&r);

		struct job j2 = { .argv = ARGV("sh", "-c", "exec yes >&2") };
		current = "CLOSE_OUTPUT stderr: the job dies of SIGPIPE";
		tests++;
		run(&j2, &r, ACT_CLOSE_OUTPUT, 2, 0);
		expect_exit(&r, 1, SIGPIPE);
		result_free(&r);

		struct job j3 = { .argv = ARGV("sh", "-c", "sleep 1; echo still-here >&2") };
		current = "CLOSE_OUTPUT of an unknown stream is ignored";
		tests++;
		run(&j3, &r, ACT_CLOSE_OUTPUT, 7, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.err, "still-here\n", "stderr");
		result_free(&r);
	}

	/* background processes keep the pipes: EXIT anyway, and the group is killed */
	{
		current = "background process holding stdout";
		tests++;
		struct job j = { .argv = ARGV("sh", "-c", "sleep 30 & echo hi") };
		struct result r;
		uint64_t t0 = now_ns();
		run(&j, &r, ACT_NONE, 0, 0);
		expect_exit(&r, 0, 0);
		expect_text(&r.out, "hi\n", "stdout");
		if (now_ns() - t0 > 5000000000ull * (uint64_t)scale) fail("took %.1f s", (now_ns() - t0) / 1e9);
		if (r.started && !group_gone_within((pid_t)r.pid, MS(3000))) fail("background process still alive");
		result_free(&r);
	}

	/* connection handling */
	{
		current = "host drops the connection during the job";
		tests++;
		struct agent a;
		if (!agent_start(&a, 1)) {
			struct job j = { .argv = ARGV("sh", "-c", "sleep 60 & exec sleep 61") };
			send_job(a.c, &j);
			struct result r;
			collect(&a, &r, ACT_DROP, 0, MS(5000));
			agent_finish(&a, 1);
			if (!r.started || !group_gone_within((pid_t)r.pid, MS(3000))) fail("job's group not killed");
			result_free(&r);
		}

		current = "READY after HELLO, JOB sent before reading it";
		tests++;
		if (!agent_start_opt(&a, 1, 0)) {
			struct job j = { .argv = ARGV("echo", "ok") };
			send_job(a.c, &j);
			struct result r;
			collect(&a, &r, ACT_NONE, 0, MS(5000)); /* READY, then STARTED */
			if (!a.ready) fail("no READY");
			expect_exit(&r, 0, 0);
			expect_text(&r.out, "ok\n", "stdout");
			result_free(&r);
			agent_finish(&a, 0);
		}

		current = "PARK: warm-up programs run once, PARKED with the agent's clock, then the JOB";
		tests++;
		if (!agent_start(&a, 1)) {
			char warm[512], marker[512], park[1100];
			snprintf(marker, sizeof marker, "%s/warmed", tmp);
			snprintf(warm, sizeof warm, "%s/warm.sh", tmp);
			unlink(marker);
			snprintf(cmd, sizeof cmd, "#!/bin/sh\necho run >> %s\n", marker);
			write_file(warm, cmd, 0755);
			/* The warm-up program, a relative path (skipped: stops the list), and nothing after it runs. */
			size_t n = 0;
			n += (size_t)snprintf(park + n, sizeof park - n, "%s", warm) + 1;
			n += (size_t)snprintf(park + n, sizeof park - n, "/no/such/program") + 1;
			n += (size_t)snprintf(park + n, sizeof park - n, "relative") + 1;
			n += (size_t)snprintf(park + n, sizeof park - n, "%s", warm) + 1;
			send_frame(a.c, T_PARK, park, (uint32_t)n);
			struct buf b = { 0 };
			int t = read_frame(a.c, &b, MS(5000));
			if (t != T_PARKED || b.n != 8) fail("expected PARKED with 8 bytes, got type %d, %zu bytes", t, b.n);
			else if (le64(b.p) < a.hello_conn || le64(b.p) > now_ns()) fail("PARKED clock out of order");
			buf_free(&b);
			size_t tn = 0;
			uint8_t *text = read_file(marker, &tn);
			if (!text || tn != 4 || memcmp(text, "run\n", 4)) fail("the warm-up program ran %s", text ? "other than once" : "never");
			free(text);
			struct job j = { .argv = ARGV("echo", "after-park") };
			send_job(a.c, &j);
			struct result r;
			collect(&a, &r, ACT_NONE, 0, MS(5000));
			expect_exit(&r, 0, 0);
			expect_text(&r.out, "after-park\n", "stdout");
			result_free(&r);
			agent_finish(&a, 0);
		}

		current = "PARK: a warm-up program still running after 10 s is killed with its group";
		tests++;
		if (!agent_start(&a, 1)) {
			char slow[512], fast[512], pgfile[512], marker[512], park[1100];
			snprintf(slow, sizeof slow, "%s/warm-slow.sh", tmp);
			snprintf(fast, sizeof fast, "%s/warm-fast.sh", tmp);
			snprintf(pgfile, sizeof pgfile, "%s/warm-slow.pid", tmp);
			snprintf(marker, sizeof marker, "%s/warm-fast.ran", tmp);
			unlink(pgfile);
			unlink(marker);
			/* a child in the background, and a sleep that outlasts the limit */
			snprintf(cmd, sizeof cmd, "#!/bin/sh\necho $$ > %s\nsleep 61 &\nsleep 60\n", pgfile);
			write_file(slow, cmd, 0755);
			snprintf(cmd, sizeof cmd, "#!/bin/sh\necho ran > %s\n", marker);
			write_file(fast, cmd, 0755);
			size_t n = 0;
			n += (size_t)snprintf(park + n, sizeof park - n, "%s", slow) + 1;
			n += (size_t)snprintf(park + n, sizeof park - n, "%s", fast) + 1;
			uint64_t t0 = now_ns();
			send_frame(a.c, T_PARK, park, (uint32_t)n);
			struct buf b = { 0 };
			int t = read_frame(a.c, &b, MS(30000));
			double took = (now_ns() - t0) / 1e9;
			if (t != T_PARKED || b.n != 8) fail("expected PARKED with 8 bytes, got type %d, %zu bytes", t, b.n);
			else if (took < 9.9 || took > 10.0 + 3.0 * scale) fail("PARKED after %.2f s, expected about 10 s", took);
			buf_free(&b);
			size_t tn = 0;
			long pg = 0;
			if (!access(pgfile, R_OK)) {
				uint8_t *text = read_file(pgfile, &tn);
				pg = atol((char *)text);
				free(text);
			}
			if (pg <= 1) fail("no process group recorded");
			else if (!group_gone_within((pid_t)pg, MS(3000))) fail("the warm-up program's group is still alive");
			if (pg > 1) kill(-(pid_t)pg, SIGKILL); /* leave nothing behind when it failed */
			if (access(marker, F_OK)) fail("the warm-up program after the killed one did not run");
			struct job j = { .argv = ARGV("echo", "after-slow-park") };
			send_job(a.c, &j);
			struct result r;
			collect(&a, &r, ACT_NONE, 0, MS(5000));
			expect_exit(&r, 0, 0);
			expect_text(&r.out, "after-slow-park\n", "stdout");
			result_free(&r);
			agent_finish(&a, 0);
		}

		current = "reconnect before the JOB";
		tests++;
		if (!agent_start(&a, 1)) {
			close(a.c);
			a.c = accept_timeout(a.ls, MS(5000));
			a.ready = 0;
			struct buf b = { 0 };
			if (a.c < 0 || read_frame(a.c, &b, MS(5000)) != T_HELLO) fail("no second HELLO");
			else if (!expect_ready(&a)) {
				/* unknown frame types, SIGNAL and STDIN before the JOB are ignored */
				send_frame(a.c, 0x7f, "xyz", 3);
				send_frame(a.c, T_SIGNAL, "\x09\0\0\0", 4);
				send_frame(a.c, T_STDIN, "abc", 3);
				struct job j = { .argv = ARGV("echo", "ok") };
				send_job(a.c, &j);
				struct result r;
				collect(&a, &r, ACT_NONE, 0, MS(5000));
				expect_exit(&r, 0, 0);
				expect_text(&r.out, "ok\n", "stdout");
				result_free(&r);
			}
			buf_free(&b);
			agent_finish(&a, 0);
		}

		current = "connect retried until the host listens";
		tests++;
		if (!agent_start(&a, 0)) {
			struct job j = { .argv = ARGV("true") };
			send_job(a.c, &j);
			struct result r;
			collect(&a, &r, ACT_NONE, 0, MS(5000));
			expect_exit(&r, 0, 0);
			result_free(&r);
			agent_close(&a);
			agent_wait(&a, MS(5000));
		}

		current = "SIGTERM before the JOB stops a --unix agent";
		tests++;
		if (!agent_start(&a, 1)) {
			kill(a.pid, SIGTERM);
			int st = agent_wait(&a, MS(3000));
			/* READY came after the signals were set up: exit(143) from the signalfd */
			if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 128 + SIGTERM) fail("agent exit status 0x%x", st);
			agent_close(&a);
		}
	}

	/* malformed frames */
	{
		uint8_t f[16] = { 0 };
		put32(f, (1u << 20) + 1);
		f[4] = T_JOB;
		malformed("frame over 1 MiB", f, 8, "longer than 1 MiB");
		memset(f, 0, sizeof f);
		f[4] = T_STDIN;
		f[6] = 1;
		malformed("reserved header bytes", f, 8, "reserved");
		memset(f, 0, sizeof f);
		put32(f, 3);
		f[4] = T_JOB;
		malformed("JOB shorter than its header", f, 11, "truncated header");
		static const char ok[] = "\0true";
		bad_job("argc 0", 0, 0, 0, 0, "\0", 1, "argc");
		bad_job("argc huge", 0, 0x7fffffff, 0, 0, ok, sizeof ok, "argc");
		bad_job("envc huge", 0, 1, 0xffffffff, 0, ok, sizeof ok, "envc");
		bad_job("seed over 512", 0, 1, 0, 513, ok, sizeof ok, "seed");
		bad_job("seed past the end", 0, 1, 0, 100, ok, sizeof ok, "seed");
		bad_job("unknown flags", 8, 1, 0, 0, ok, sizeof ok, "flags");
		bad_job("unknown flags with the clock", 0x80000003, 1, 0, 0, "\0\0\0\0\0\0\0\0\0true", 14, "flags");
		bad_job("wall clock missing", F_CLOCK, 1, 0, 0, "", 0, "wall clock");
		bad_job("wall clock truncated", F_CLOCK, 1, 0, 0, "\0\0\0\0\0\0\0", 7, "wall clock");
		/* 8 + 6 bytes after the fixed part: an 8-byte seed would fit only without the clock */
		bad_job("seed past the end after the wall clock", F_CLOCK, 1, 0, 8, "\0\0\0\0\0\0\0\0\0true", 14, "seed");
		/* flag bit 2: u32 uid, gid, ngroups (<= 64), zero; ngroups u32 groups */
		bad_job("credentials missing", F_CREDS, 1, 0, 0, "", 0, "truncated credentials");
		bad_job("credentials truncated", F_CREDS, 1, 0, 0, "\xe8\x03\0\0\xe8\x03\0\0\0\0\0\0\0\0\0", 15,
			"truncated credentials");
		{
			struct buf c = { 0 };
			add32(&c, 1000);
			add32(&c, 1000);
			add32(&c, 65);
			add32(&c, 0);
			for (int i = 0; i < 65; i++) add32(&c, 100);
			buf_add(&c, ok, sizeof ok);
			bad_job("credentials with 65 groups", F_CREDS, 1, 0, 0, c.p, c.n, "more than 64 groups");
			c.n = 0;
			add32(&c, 1000);
			add32(&c, 1000);
			add32(&c, 0);
			add32(&c, 1);
			buf_add(&c, ok, sizeof ok);
			bad_job("credentials zero field not zero", F_CREDS, 1, 0, 0, c.p, c.n, "reserved field not zero");
			/* 2 groups announced, 4 bytes follow */
			c.n = 0;
			add32(&c, 1000);
			add32(&c, 1000);
			add32(&c, 2);
			add32(&c, 0);
			add32(&c, 100);
			bad_job("credentials groups truncated", F_CREDS, 1, 0, 0, c.p, c.n, "truncated credentials");
			/* after the wall clock: 8 bytes of clock, then 15 of credentials */
			c.n = 0;
			add64(&c, 1);
			buf_add(&c, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 15);
			bad_job("credentials truncated after the wall clock", F_CLOCK | F_CREDS, 1, 0, 0, c.p, c.n, "truncated credentials");
			/* the credentials come after the clock: their zero field is the 7 (read
			 * at the wrong offset, they would announce 1000 groups) */
			c.n = 0;
			add64(&c, 0x100000000ull);
			add32(&c, 1000);
			add32(&c, 1000);
			add32(&c, 0);
			add32(&c, 7);
			buf_add(&c, ok, sizeof ok);
			bad_job("credentials zero field after the wall clock", F_CLOCK | F_CREDS, 1, 0, 0, c.p, c.n, "reserved field not zero");
			buf_free(&c);
		}
		bad_job("no NUL", 0, 1, 0, 0, "\0true", 5, "argument");
		bad_job("too few strings", 0, 2, 0, 0, ok, sizeof ok, "argument");
		bad_job("trailing bytes", 0, 1, 0, 0, "\0true\0x", 7, "trailing");
		bad_job("empty argv[0]", 0, 1, 0, 0, "\0\0", 2, "argv[0]");
		bad_job("environment without =", 0, 1, 1, 0, "\0true\0NOEQUALS", 15, "'='");
		bad_job("environment =value", 0, 1, 1, 0, "\0true\0=v", 9, "name");
		bad_job("no working directory", 0, 1, 0, 0, "", 0, "working directory");
		char longdir[5000];
		memset(longdir, 'a', sizeof longdir);
		longdir[0] = '/';
		longdir[4999] = 0;
		struct buf b = { 0 };
		buf_add(&b, longdir, sizeof longdir);
		addstr(&b, "true");
		bad_job("working directory too long", 0, 1, 0, 0, b.p, b.n, "working directory");
		buf_free(&b);
	}

	startup();

	if (failures) printf("agent tests: %d failure(s) in %d tests\n", failures, tests);
	else printf("agent tests: all %d passed\n", tests);
	return failures ? 1 : 0;
}
