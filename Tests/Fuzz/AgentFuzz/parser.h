/* The agent's frame and JOB parsers (rootfs/agent/agent.c), as parser.c
 * exports them to the fuzz harness (main.c). */
#ifndef AGENT_FUZZ_PARSER_H
#define AGENT_FUZZ_PARSER_H

/* What parse_job left in the agent's state for an accepted JOB. */
struct parsed_job {
	unsigned flags;
	unsigned long wall_ns;
	const unsigned char *seed;
	unsigned seed_len;
	const char *workdir;
	int in_root;
	const char *path; /* the PATH the agent searches argv[0] in */
	char **argv;      /* NULL-terminated */
	char **envp;      /* NULL-terminated */
};

/* frame_header: 1 complete (*len), 0 more bytes needed, -1 protocol error (*why). */
int agent_frame_header(const unsigned char *h, unsigned long avail, unsigned *len, const char **why);
/* parse_job: 0 and *out filled, or why the JOB is malformed. */
const char *agent_parse_job(const unsigned char *p, unsigned len, struct parsed_job *out);
/* next_str: the string at p[*off] (of at most max bytes, NUL inside p[0..len)), or 0. */
const char *agent_next_str(const unsigned char *p, unsigned len, unsigned *off, unsigned max);

#define AGENT_MAX_FRAME (1u << 20)
#define AGENT_MAX_DIR 4095u
#define AGENT_MAX_STR (128u << 10)
#define AGENT_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#endif
