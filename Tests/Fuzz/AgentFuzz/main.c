/*
 * libFuzzer harness for the guest agent's parsers (rootfs/agent/agent.c,
 * compiled natively with AGENT_FUZZ, see parser.c): the frame header check
 * the agent runs on every byte the host sends, the JOB payload parser, and
 * the NUL-terminated string reader PARK uses.
 *
 * Input: byte 0 chooses how the rest is used (by byte 0 % 2):
 *   0  the byte stream the host sends, arriving in reads whose sizes byte 0
 *      chooses (each at least 1/64 of the stream). After each read, every
 *      complete frame is parsed: a JOB payload with parse_job, a PARK payload
 *      walked as the agent walks it, any other payload read as strings; a
 *      protocol error ends the stream, as it ends the agent's connection.
 *   1  a compact description of one JOB frame, for sizes the input cannot
 *      hold itself (strings past 128 KiB, 16384 arguments, frames past 1 MiB):
 *      [reserved byte of the frame header][flags u32][argc u32][envc u32]
 *      [seed length u32][8 clock bytes, when flags bit 1], then that many seed
 *      bytes (at most 700), then items [op u8] by op % 4: 0 [n u8][n bytes] a
 *      string; 1 [fill u8][n u24] a string of n fill bytes; 2 [count u16]
 *      [n u8][n bytes] count such strings; 3 [n u8][n bytes] without a NUL.
 *      The payload stops at 256 KiB (at 1 MiB + 4 KiB when the input's length
 *      is a multiple of 16).
 * Each buffer a parser gets ends where its allocation ends, so AddressSanitizer
 * catches any read past it. Each answer is checked against PROTOCOL.md's
 * rules, implemented here independently: a frame over 1 MiB or with non-zero
 * reserved bytes is an error as soon as its header is in; a JOB is accepted
 * exactly when it is well formed, and then argv, envp (PATH and HOME added when
 * missing), the working directory, seed and clock are the payload's own.
 * Build and run with `FUZZ_TARGET=agent Tests/Fuzz/run.sh`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sanitizer/asan_interface.h>

#include "parser.h"

#define T_JOB 0x81
#define T_PARK 0x84
#define MAX_ARGS 16384u
#define MAX_ENV 16384u
#define MAX_SEED 512u

static void check(int ok, const char *what)
{
	if (ok) return;
	fprintf(stderr, "agent fuzz: %s\n", what);
	abort();
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

/* A copy of the bytes a parser gets that ends where its heap block ends, so
 * a read past them is a heap-buffer-overflow; the unused front is poisoned.
 * (One block each, allocated once: a fresh large block per input costs page
 * faults that would dominate the run.) */
struct place { uint8_t *block, *at; };
#define PLACE_SIZE (8 + AGENT_MAX_FRAME + 8192)

static uint8_t *place(struct place *t, const uint8_t *p, size_t n)
{
	check(n <= PLACE_SIZE, "too large to place");
	if (!t->block) t->block = malloc(PLACE_SIZE);
	check(t->block != 0, "malloc");
	t->at = t->block + PLACE_SIZE - n;
	if (n) memmove(t->at, p, n);
	ASAN_POISON_MEMORY_REGION(t->block, PLACE_SIZE - n);
	return t->at;
}

static void unplace(struct place *t)
{
	ASAN_UNPOISON_MEMORY_REGION(t->block, PLACE_SIZE);
}

static struct place unparsed, payload_place;

/* ---- frames ---- */

/* PROTOCOL.md's framing: 1 complete, 0 incomplete, -1 protocol error. */
static int oracle_header(const uint8_t *h, size_t avail, uint32_t *len, int *too_long)
{
	if (avail < 8) return 0;
	*len = le32(h);
	*too_long = *len > AGENT_MAX_FRAME;
	if (*too_long || h[5] || h[6] || h[7]) return -1;
	return avail >= 8 + (size_t)*len ? 1 : 0;
}

/* Both answers for the frame at h; returns the agent's. */
static int header(const uint8_t *h, size_t avail, unsigned *len)
{
	const char *why = 0;
	unsigned n = 0;
	uint32_t want = 0;
	int too_long = 0;
	int r = agent_frame_header(h, avail, &n, &why);
	int expect = oracle_header(h, avail, &want, &too_long);
	check(r == expect, r < expect ? "frame header refused or incomplete, PROTOCOL.md says otherwise"
	                              : "frame header accepted or complete, PROTOCOL.md says otherwise");
	if (r > 0) check(n == want, "frame length is not the header's");
	if (r < 0) {
		check(why != 0, "a protocol error without a reason");
		check(strcmp(why, too_long ? "frame longer than 1 MiB" : "reserved header bytes not zero") == 0,
		      "protocol error for the wrong reason");
	}
	*len = n;
	return r;
}

/* ---- JOB ---- */

struct oracle_job {
	uint32_t flags, argc, envc, seed_len;
	uint64_t wall_ns;
	size_t seed;
	size_t str[1 + MAX_ARGS + MAX_ENV]; /* offsets: the directory, argv, envp */
};
static struct oracle_job o;

/* 0 when PROTOCOL.md calls the payload a well-formed JOB, else the rule it breaks. */
static const char *oracle_job(const uint8_t *p, size_t len)
{
	if (len < 16) return "shorter than 16 bytes";
	o.flags = le32(p);
	o.argc = le32(p + 4);
	o.envc = le32(p + 8);
	o.seed_len = le32(p + 12);
	if (o.flags & ~7u) return "unknown flags";
	if (o.argc == 0 || o.argc > MAX_ARGS) return "argc";
	if (o.envc > MAX_ENV) return "envc";
	size_t off = 16;
	if (o.flags & 2) {
		if (len - off < 8) return "wall clock";
		o.wall_ns = le64(p + off);
		off += 8;
	}
	if (o.flags & 4) { /* credentials: uid, gid, ngroups (<= 64), zero, then the groups */
		if (len - off < 16 || le32(p + off + 8) > 64 || le32(p + off + 12)) return "credentials";
		size_t groups = 4 * (size_t)le32(p + off + 8);
		off += 16;
		if (len - off < groups) return "credentials";
		off += groups;
	}
	if (o.seed_len > MAX_SEED || o.seed_len > len - off) return "seed";
	o.seed = off;
	off += o.seed_len;
	size_t strings = 1 + (size_t)o.argc + o.envc;
	for (size_t i = 0; i < strings; i++) {
		const uint8_t *nul = off < len ? memchr(p + off, 0, len - off) : 0;
		if (!nul) return "a string without its NUL";
		size_t n = (size_t)(nul - (p + off));
		if (n > (i == 0 ? AGENT_MAX_DIR : AGENT_MAX_STR)) return "a string too long";
		o.str[i] = off;
		off += n + 1;
	}
	if (!p[o.str[1]]) return "empty argv[0]";
	for (size_t i = 1 + o.argc; i < strings; i++) {
		const char *e = (const char *)p + o.str[i];
		if (!e[0] || e[0] == '=') return "an environment string without a name";
		if (!strchr(e, '=')) return "an environment string without '='";
	}
	if (off != len) return "bytes after the last string";
	return 0;
}

static void job(const uint8_t *p, unsigned len)
{
	struct parsed_job j;
	const char *why = agent_parse_job(p, len, &j);
	const char *rule = oracle_job(p, len);
	if (why || rule) {
		if (!why) fprintf(stderr, "agent fuzz: JOB breaks \"%s\"\n", rule);
		if (!rule) fprintf(stderr, "agent fuzz: JOB refused (%s)\n", why);
		check(why && rule, "the agent and PROTOCOL.md disagree on a JOB");
		return;
	}
	check(j.flags == o.flags, "flags");
	if (o.flags & 2) check(j.wall_ns == o.wall_ns, "wall clock");
	check(j.seed == p + o.seed && j.seed_len == o.seed_len, "seed");
	const char *dir = (const char *)p + o.str[0];
	check(dir[0] ? j.workdir == dir : strcmp(j.workdir, "/") == 0, "working directory");
	check(j.in_root == (!dir[0] || strcmp(dir, "/") == 0), "working directory is /");
	for (uint32_t i = 0; i < o.argc; i++) check(j.argv[i] == (const char *)p + o.str[1 + i], "argv");
	check(j.argv[o.argc] == 0, "argv not NULL-terminated");
	int path = 0, home = 0, path_is_one = 0;
	for (uint32_t i = 0; i < o.envc; i++) {
		const char *e = (const char *)p + o.str[1 + o.argc + i];
		check(j.envp[i] == e, "envp");
		if (!strncmp(e, "PATH=", 5)) { path = 1; path_is_one |= j.path == e + 5; }
		if (!strncmp(e, "HOME=", 5)) home = 1;
	}
	uint32_t n = o.envc;
	if (!path) check(j.envp[n] && !strcmp(j.envp[n++], "PATH=" AGENT_DEFAULT_PATH), "PATH added");
	if (!home) check(j.envp[n] && !strcmp(j.envp[n++], "HOME=/root"), "HOME added");
	check(j.envp[n] == 0, "envp not NULL-terminated");
	/* With several PATH= strings the protocol does not say which; one of them. */
	check(path ? path_is_one : !strcmp(j.path, AGENT_DEFAULT_PATH), "the PATH argv[0] is searched in");
}

/* ---- strings (PARK, and any other payload) ---- */

/* One next_str call at *off, checked: the string there if it ends inside p
 * and is at most max bytes long; else 0 and *off unchanged. */
static const char *string_at(const uint8_t *p, unsigned len, unsigned *off, unsigned max)
{
	unsigned before = *off;
	const char *s = agent_next_str(p, len, off, max);
	const uint8_t *nul = before < len ? memchr(p + before, 0, len - before) : 0;
	if (nul && (size_t)(nul - (p + before)) <= max) {
		check(s == (const char *)p + before, "next_str missed a string");
		check(*off == (unsigned)(nul - p) + 1, "next_str moved past the wrong byte");
	} else {
		check(s == 0, "next_str returned a string without a NUL, or too long");
		check(*off == before, "next_str moved on after a failure");
	}
	return s;
}

/* As park() walks PARK: at most 16 absolute paths of at most MAX_DIR bytes. */
static void park(const uint8_t *p, unsigned len)
{
	unsigned off = 0;
	for (int i = 0; i < 16 && off < len; i++) {
		const char *path = string_at(p, len, &off, AGENT_MAX_DIR);
		if (!path || path[0] != '/') break;
	}
}

/* Other payloads: every string, with a small limit (the boundary in reach). */
static void strings(const uint8_t *p, unsigned len, unsigned max)
{
	unsigned off = 0;
	while (off < len && string_at(p, len, &off, max)) {}
}

static void frame(int type, const uint8_t *payload, unsigned len)
{
	uint8_t *p = place(&payload_place, payload, len);
	if (type == T_JOB) job(p, len);
	else if (type == T_PARK) park(p, len);
	else strings(p, len, (unsigned)type % 16);
	unplace(&payload_place);
}

/* ---- inputs ---- */

static void stream(const uint8_t *s, size_t n, unsigned schedule)
{
	static const size_t sizes[] = { 1, 2, 5, 8, 9, 64, 4096, 1 << 20 };
	size_t start = 0, end = 0, least = n / 64 + 1;
	unsigned k = schedule;
	while (end < n) {
		size_t chunk = sizes[k++ % 8];
		end += chunk < least ? least : chunk;
		if (end > n) end = n;
		/* What the agent holds unparsed, ending where the allocation ends. */
		size_t avail = end - start, off = 0;
		uint8_t *buf = place(&unparsed, s + start, avail);
		int r;
		unsigned len;
		while ((r = header(buf + off, avail - off, &len)) > 0) {
			frame(buf[off + 4], buf + off + 8, len);
			off += 8 + (size_t)len;
		}
		unplace(&unparsed);
		if (r < 0) return; /* the agent sends ERROR and closes */
		start += off;
	}
}

struct bytes { uint8_t *p; size_t n, cap; };

static void add(struct bytes *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		check(b->p != 0, "realloc");
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void fill(struct bytes *b, uint8_t c, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		check(b->p != 0, "realloc");
	}
	memset(b->p + b->n, c, n);
	b->n += n;
}

/* One JOB frame from its compact description (see the top). */
static void built(const uint8_t *in, size_t n)
{
	/* Enough for every per-item limit; now and then a frame past 1 MiB (slow). */
	const size_t cap = n % 16 == 0 ? AGENT_MAX_FRAME + 4096 : 256 << 10;
	if (n < 17) return;
	static struct bytes b; /* kept: see place() */
	b.n = 0;
	uint8_t reserved = in[0];
	add(&b, in + 1, 16);
	size_t at = 17;
	if ((le32(in + 1) & 2) && at + 8 <= n) { add(&b, in + at, 8); at += 8; }
	uint32_t seed = le32(in + 13);
	for (uint32_t i = 0; i < seed && i < 700; i++) { uint8_t c = (uint8_t)(i * 31 + 7); add(&b, &c, 1); }
	static const uint8_t zero = 0;
	while (at < n && b.n < cap) {
		uint8_t op = in[at++];
		size_t left = n - at;
		switch (op % 4) {
		case 0:
		case 3: {
			size_t k = left ? in[at] : 0;
			if (k > left - (left ? 1 : 0)) k = left ? left - 1 : 0;
			add(&b, in + at + 1, k);
			at += 1 + k;
			if (op % 4 == 0) add(&b, &zero, 1);
			break;
		}
		case 1:
			if (left < 4) { at = n; break; }
			{
				size_t k = (size_t)in[at + 1] | (size_t)in[at + 2] << 8 | (size_t)in[at + 3] << 16;
				fill(&b, in[at], k < cap + 1 - b.n ? k : cap + 1 - b.n); /* the rest would be cut off */
			}
			add(&b, &zero, 1);
			at += 4;
			break;
		default: {
			if (left < 3) { at = n; break; }
			size_t k = in[at + 2];
			if (k > left - 3) k = left - 3;
			for (unsigned c = in[at] | in[at + 1] << 8; c && b.n < cap; c--) {
				add(&b, in + at + 3, k);
				add(&b, &zero, 1);
			}
			at += 3 + k;
			break;
		}
		}
	}
	if (at > n) at = n;
	/* The frame, whole: header, then the payload. */
	size_t payload = b.n < cap ? b.n : cap;
	uint8_t h[8];
	h[0] = (uint8_t)payload;
	h[1] = (uint8_t)(payload >> 8);
	h[2] = (uint8_t)(payload >> 16);
	h[3] = (uint8_t)(payload >> 24);
	h[4] = T_JOB;
	h[5] = reserved;
	h[6] = h[7] = 0;
	/* Header in front of the payload, in the kept buffer (room was made). */
	add(&b, h, 8);
	memmove(b.p + 8, b.p, payload);
	memcpy(b.p, h, 8);
	uint8_t *f = place(&unparsed, b.p, 8 + payload);
	unsigned len;
	if (header(f, 8 + payload, &len) > 0) frame(T_JOB, f + 8, len);
	unplace(&unparsed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1) return 0;
	if (data[0] % 2 == 0) stream(data + 1, size - 1, data[0] >> 1);
	else built(data + 1, size - 1);
	return 0;
}
