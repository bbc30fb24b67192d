#ifndef CRUNNER_H
#define CRUNNER_H
#include <sys/types.h>

/// Starts `path` with `argv` and `envp` in a new process group, with
/// PR_SET_PDEATHSIG(SIGKILL) so it dies with the thread that called this
/// (call it from a thread that lives as long as the daemon). `fds[i]`
/// becomes descriptor i in the child for i < nfds (-1: /dev/null); every
/// other descriptor is closed. `nice` (0..39) is added to the child's
/// process group's nice value once it has exec'd. Returns the pid, or -errno.
pid_t swd_spawn(const char *path, char *const argv[], char *const envp[], const int *fds, int nfds, int nice);

/// pipe2(fds, O_CLOEXEC): 0 or -errno.
int swd_pipe(int fds[2]);

/// kill(-pgid, signo), 0 or -errno.
int swd_kill_group(pid_t pgid, int signo);
#endif
