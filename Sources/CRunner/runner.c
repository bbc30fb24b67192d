#define _GNU_SOURCE
#include "CRunner.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t swd_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds) {
    if (nfds < 0 || nfds > 16) return -EINVAL;
    int err_pipe[2];
    if (pipe2(err_pipe, O_CLOEXEC) != 0) return -errno;
    pid_t parent = getpid();
    // vfork semantics are not needed; fork keeps the parent's memory safe.
    pid_t pid = fork();
    if (pid < 0) { int e = errno; close(err_pipe[0]); close(err_pipe[1]); return -e; }
    if (pid == 0) {
        // Only async-signal-safe calls from here: the parent is multithreaded.
        int e = 0;
        sigset_t none; sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int s = 1; s < 32; s++) if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) { e = errno; goto fail; }
        if (getppid() != parent) _exit(127);   // the daemon died before prctl
        if (setpgid(0, 0) != 0) { e = errno; goto fail; }
        // Move the wanted descriptors above nfds first, so that dup2 into
        // 0..nfds-1 never clobbers one still needed.
        int moved[16];
        for (int i = 0; i < nfds; i++) {
            int src = fds[i];
            if (src < 0) src = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (src < 0) { e = errno; goto fail; }
            moved[i] = fcntl(src, F_DUPFD_CLOEXEC, 64);
            if (moved[i] < 0) { e = errno; goto fail; }
        }
        for (int i = 0; i < nfds; i++) {
            if (dup2(moved[i], i) < 0) { e = errno; goto fail; }
        }
        // Everything else goes (the error pipe is close-on-exec).
        if (syscall(SYS_close_range, (unsigned)nfds, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) != 0) {
            for (int fd = nfds; fd < 1024; fd++) if (fd != err_pipe[1]) close(fd);
        }
        execve(path, argv, envp);
        e = errno;
    fail:
        (void)!write(err_pipe[1], &e, sizeof e);
        _exit(127);
    }
    close(err_pipe[1]);
    int child_errno = 0;
    ssize_t n;
    do { n = read(err_pipe[0], &child_errno, sizeof child_errno); } while (n < 0 && errno == EINTR);
    close(err_pipe[0]);
    if (n == (ssize_t)sizeof child_errno) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return -child_errno;
    }
    return pid;
}

int swd_kill_group(pid_t pgid, int signo) {
    if (pgid <= 1) return -EINVAL;
    return kill(-pgid, signo) == 0 ? 0 : -errno;
}

int swd_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }
