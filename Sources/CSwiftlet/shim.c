#define _GNU_SOURCE
#include "CSwiftlet.h"
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <time.h>
#include <string.h>
#include <errno.h>

int swl_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5) {
    return prctl(option, a2, a3, a4, a5);
}
pid_t swl_gettid(void) { return (pid_t)syscall(SYS_gettid); }
int swl_pthread_setname(pthread_t thread, const char *name) { return pthread_setname_np(thread, name); }
int swl_eventfd(unsigned int initval, int flags) { return eventfd(initval, flags); }
int swl_eventfd_new(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
int swl_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int swl_epoll_add(int epfd, int fd, uint64_t data) {
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}
int swl_epoll_wait(int epfd, uint32_t *events, uint64_t *data, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { events[i] = evs[i].events; data[i] = evs[i].data.u64; }
    return n;
}
int swl_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
#include <fcntl.h>
int swl_fallocate(int fd, int mode, int64_t offset, int64_t len) { return fallocate(fd, mode, offset, len); }

int swl_sigrtmin(void) { return SIGRTMIN; }
static void swl_empty_handler(int signo) { (void)signo; }
int swl_install_empty_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = swl_empty_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}
static int swl_mask(int how, int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(how, &set, NULL);
}
int swl_block_signal(int signo) { return swl_mask(SIG_BLOCK, signo); }
int swl_unblock_signal(int signo) { return swl_mask(SIG_UNBLOCK, signo); }

uint64_t swl_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
uint64_t swl_process_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint64_t swl_start_ns;
__attribute__((constructor(101))) static void swl_record_start(void) { swl_start_ns = swl_monotonic_ns(); }
uint64_t swl_process_start_ns(void) { return swl_start_ns; }

#include <sys/signalfd.h>
int swl_signalfd_termination(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}
int swl_signalfd_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

#include <cpuid.h>
void swl_test_cpuid(uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx) {
    __cpuid_count(*eax, 0, *eax, *ebx, *ecx, *edx);
}

#include <sys/socket.h>
int swl_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

int swl_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = { .events = events, .data.u64 = data };
    return epoll_ctl(epfd, op, fd, &ev);
}

#include <sys/random.h>
int swl_getrandom(void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((char *)buf + done, len - done, 0);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        done += (size_t)n;
    }
    return 0;
}

int swl_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }
