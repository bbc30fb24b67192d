#define _GNU_SOURCE
#include "CRunner.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct spawn_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    const int *fds;
    int nfds;
    int nice;
    pid_t parent;
    int devnull;
    volatile int err;
};

// The child of clone(CLONE_VM | CLONE_VFORK): it shares the daemon's memory
// (no page tables copied, which fork of a large process spends milliseconds
// on) while the calling thread waits for its exec. So: raw system calls only,
// nothing that allocates or takes a lock, and the result goes back through
// `err` in the shared memory.
static int spawn_child(void *p) {
    struct spawn_args *a = p;
    int e = 0;
    // Handlers would run the daemon's code on this stack: defaults first,
    // then the mask the parent blocked everything with is cleared.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < _NSIG; s++) {
        struct sigaction old;
        if (s == SIGKILL || s == SIGSTOP) continue;
        if (sigaction(s, NULL, &old) == 0 && old.sa_handler != SIG_DFL) sigaction(s, &dfl, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) { e = errno; goto fail; }
    if (getppid() != a->parent) { e = ESRCH; goto fail; }   // the daemon died before prctl
    if (setpgid(0, 0) != 0) { e = errno; goto fail; }
    // Move the wanted descriptors above nfds first, so that dup2 into
    // 0..nfds-1 never clobbers one still needed.
    int moved[16];
    for (int i = 0; i < a->nfds; i++) {
        int src = a->fds[i] < 0 ? a->devnull : a->fds[i];
        moved[i] = fcntl(src, F_DUPFD_CLOEXEC, 64);
        if (moved[i] < 0) { e = errno; goto fail; }
    }
    for (int i = 0; i < a->nfds; i++) {
        if (dup2(moved[i], i) < 0) { e = errno; goto fail; }
    }
    // Everything else closes at exec.
    if (syscall(SYS_close_range, (unsigned)a->nfds, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) != 0) {
        for (int fd = a->nfds; fd < 4096; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(a->path, a->argv, a->envp);
    e = errno;
fail:
    a->err = e ? e : EIO;
    _exit(127);
}

pid_t swd_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int nice) {
    if (nfds < 0 || nfds > 16 || nice < 0 || nice > 39) return -EINVAL;
    struct spawn_args a = { path, argv, envp, fds, nfds, nice, getpid(), -1, 0 };
    a.devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (a.devnull < 0) return -errno;
    const size_t stack_size = 64 * 1024;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) { int e = errno; close(a.devnull); return -e; }
    // No signal handler may run in the child before it resets them.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = clone(spawn_child, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, stack_size);
    close(a.devnull);
    if (pid < 0) return -clone_errno;
    if (a.err != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -a.err;
    }
    // Niced after its exec, not before: the exec (this thread waits on it)
    // runs at the daemon's priority. The whole process group, every thread:
    // threads and children made later inherit it.
    if (a.nice > 0) {
        errno = 0;
        int now = getpriority(PRIO_PROCESS, 0);
        if (!(now == -1 && errno != 0)) setpriority(PRIO_PGRP, pid, now + a.nice);
    }
    return pid;
}

int swd_kill_group(pid_t pgid, int signo) {
    if (pgid <= 1) return -EINVAL;
    return kill(-pgid, signo) == 0 ? 0 : -errno;
}

int swd_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }
