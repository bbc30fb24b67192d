#ifndef CJAIL_H
#define CJAIL_H
// CJail: the calls the jailer needs that Swift's Glibc module does not import
// (they sit behind _GNU_SOURCE or have no glibc wrapper): unshare, the
// CLONE_NEW* flags, pivot_root, setres[ug]id, prctl(PR_SET_PDEATHSIG), and the
// supervisor's async-signal-safe signal forwarding.
#include <sys/types.h>

extern const int SWL_JAIL_CLONE_NEWNS;
extern const int SWL_JAIL_CLONE_NEWPID;
extern const int SWL_JAIL_CLONE_NEWNET;
extern const int SWL_JAIL_CLONE_NEWIPC;
extern const int SWL_JAIL_CLONE_NEWUTS;

int swl_jail_unshare(int flags);
/// pivot_root(2) has no glibc wrapper.
int swl_jail_pivot_root(const char *new_root, const char *put_old);
int swl_jail_setresuid(uid_t r, uid_t e, uid_t s);
int swl_jail_setresgid(gid_t r, gid_t e, gid_t s);
/// getresuid(2) into three out-parameters.
int swl_jail_getresuid(uid_t *r, uid_t *e, uid_t *s);
int swl_jail_getresgid(gid_t *r, gid_t *e, gid_t *s);
/// prctl(PR_SET_PDEATHSIG, signo).
int swl_jail_set_pdeathsig(int signo);

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and remembers the
/// previous mask, so that none is lost between fork and the handlers.
int swl_jail_block_termination(void);
/// Supervisor side, after fork: SIGINT/SIGTERM/SIGHUP are sent on to `child`
/// (SA_RESTART handlers), then the mask saved by swl_jail_block_termination
/// comes back with the three unblocked (pending ones are forwarded then).
int swl_jail_forward_termination(pid_t child);
/// The signal the supervisor last forwarded (or swallowed once stopped), or 0.
int swl_jail_last_forwarded(void);
/// Back to the mask swl_jail_block_termination saved (when fork failed).
int swl_jail_restore_mask(void);
/// Forward no more (the child is reaped: its pid may be reused); the
/// handlers stay, swallowing the signals while the supervisor cleans up.
void swl_jail_stop_forwarding(void);
/// SIGINT, SIGTERM and SIGHUP back to their default action.
int swl_jail_default_termination(void);
/// Child side, after fork: SIGINT/SIGTERM/SIGHUP get handlers that _exit with
/// 128+signo, then the saved mask comes back, the three unblocked. The
/// child is pid 1 of a new pid namespace, and the kernel drops a signal at
/// default disposition sent to such an init, even from the parent
/// namespace: without a handler, a forwarded SIGTERM would do nothing until
/// the VMM blocks it into its signalfd.
int swl_jail_child_termination(void);
#endif
