#define _GNU_SOURCE
#include "CJail.h"
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

const int SWL_JAIL_CLONE_NEWNS = CLONE_NEWNS;
const int SWL_JAIL_CLONE_NEWPID = CLONE_NEWPID;
const int SWL_JAIL_CLONE_NEWNET = CLONE_NEWNET;
const int SWL_JAIL_CLONE_NEWIPC = CLONE_NEWIPC;
const int SWL_JAIL_CLONE_NEWUTS = CLONE_NEWUTS;

int swl_jail_unshare(int flags) { return unshare(flags); }
int swl_jail_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}
int swl_jail_setresuid(uid_t r, uid_t e, uid_t s) { return setresuid(r, e, s); }
int swl_jail_setresgid(gid_t r, gid_t e, gid_t s) { return setresgid(r, e, s); }
int swl_jail_getresuid(uid_t *r, uid_t *e, uid_t *s) { return getresuid(r, e, s); }
int swl_jail_getresgid(gid_t *r, gid_t *e, gid_t *s) { return getresgid(r, e, s); }
int swl_jail_set_pdeathsig(int signo) { return prctl(PR_SET_PDEATHSIG, (unsigned long)signo, 0, 0, 0); }

static sigset_t saved_mask;
static volatile sig_atomic_t forward_pid;
static volatile sig_atomic_t last_forwarded;
static const int termination[] = { SIGINT, SIGTERM, SIGHUP };

int swl_jail_block_termination(void) {
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < 3; i++) sigaddset(&set, termination[i]);
    return sigprocmask(SIG_BLOCK, &set, &saved_mask);
}

static void forward(int signo, siginfo_t *info, void *context) {
    (void)context;
    int saved = errno; // a handler must leave errno as it found it
    last_forwarded = signo;
    // The terminal's own signals (Ctrl-C, a hang-up: si_code SI_KERNEL) go
    // to the whole foreground process group, the child included: passing
    // them on would make one Ctrl-C two, and `run` stops at once on a second.
    if (forward_pid > 0 && info->si_code != SI_KERNEL) kill((pid_t)forward_pid, signo);
    errno = saved;
}

static void exit_by_signal(int signo) { _exit(128 + signo); }

static int install(void (*handler)(int), void (*action)(int, siginfo_t *, void *), int flags) {
    struct sigaction sa = { 0 };
    if (action) {
        sa.sa_sigaction = action;
        flags |= SA_SIGINFO;
    } else {
        sa.sa_handler = handler;
    }
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < 3; i++) {
        if (sigaction(termination[i], &sa, NULL) != 0) return -1;
    }
    // The saved mask, less the three: a mask inherited with them blocked
    // (a test runner's thread, say) would keep them from ever arriving.
    sigset_t mask = saved_mask;
    for (size_t i = 0; i < 3; i++) sigdelset(&mask, termination[i]);
    return sigprocmask(SIG_SETMASK, &mask, NULL);
}

int swl_jail_forward_termination(pid_t child) {
    forward_pid = child;
    return install(NULL, forward, SA_RESTART);
}
int swl_jail_last_forwarded(void) { return last_forwarded; }
int swl_jail_restore_mask(void) { return sigprocmask(SIG_SETMASK, &saved_mask, NULL); }
void swl_jail_stop_forwarding(void) { forward_pid = 0; }
int swl_jail_default_termination(void) {
    struct sigaction sa = { 0 };
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < 3; i++) {
        if (sigaction(termination[i], &sa, NULL) != 0) return -1;
    }
    return 0;
}
int swl_jail_child_termination(void) { return install(exit_by_signal, NULL, 0); }
