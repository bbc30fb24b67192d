/* rootfs/agent/agent.c compiled natively for the fuzzer: AGENT_FUZZ leaves out
 * its entry point and its own mem* functions (libc's are used), and this file
 * exports the pure parsers it calls (see parser.h). Nothing else of the agent
 * runs here. */
#include <string.h>

#include "agent.c"
#include "parser.h"

int agent_frame_header(const unsigned char *h, unsigned long avail, unsigned *len, const char **why)
{
	return frame_header(h, avail, len, why);
}

const char *agent_parse_job(const unsigned char *p, unsigned len, struct parsed_job *out)
{
	const char *why = parse_job(p, len);
	if (why) return why;
	out->flags = g.flags;
	out->wall_ns = g.wall_ns;
	out->seed = g.seed;
	out->seed_len = g.seed_len;
	out->workdir = g.workdir;
	out->in_root = g.in_root;
	out->path = g.path;
	out->argv = job_argv + 1;
	out->envp = job_envp;
	return 0;
}

const char *agent_next_str(const unsigned char *p, unsigned len, unsigned *off, unsigned max)
{
	return next_str(p, len, off, max);
}

/* The harness's oracle takes these from PROTOCOL.md; the agent must agree. */
_Static_assert(AGENT_MAX_FRAME == MAX_FRAME, "frame limit");
_Static_assert(AGENT_MAX_DIR == MAX_DIR && AGENT_MAX_STR == MAX_STR, "string limits");
