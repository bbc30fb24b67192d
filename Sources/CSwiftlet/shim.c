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
int swl_eventfd_new(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
int swl_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
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

#include <sys/timerfd.h>
int swl_timerfd_new(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int swl_timerfd_every(int fd, uint64_t nanos) {
    struct itimerspec t = {
        .it_interval = { .tv_sec = (time_t)(nanos / 1000000000u), .tv_nsec = (long)(nanos % 1000000000u) },
    };
    t.it_value = t.it_interval;
    return timerfd_settime(fd, 0, &t, NULL);
}

int swl_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

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

#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <ifaddrs.h>
unsigned int if_nametoindex(const char *ifname);
int swl_tap_open(const char *name, char *out_name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (name) strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { int e = errno; close(fd); errno = e; return -1; }
    if (out_name) { memcpy(out_name, ifr.ifr_name, IFNAMSIZ); out_name[IFNAMSIZ - 1] = 0; }
    return fd;
}
int swl_tap_set_vnet_hdr_size(int fd, int size) { return ioctl(fd, TUNSETVNETHDRSZ, &size); }
int swl_tap_set_offload(int fd, unsigned int flags) { return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags); }
unsigned int swl_if_index(const char *name) { return if_nametoindex(name); }
int swl_if_set_ipv4_up(const char *name, uint32_t addr, uint32_t mask) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0) goto fail;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(mask);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) goto fail;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) goto fail;
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) goto fail;
    close(s);
    return 0;
fail:;
    int e = errno;
    close(s);
    errno = e;
    return -1;
}
int swl_ipv4_net_in_use(uint32_t net, uint32_t mask) {
    struct ifaddrs *list;
    if (getifaddrs(&list) < 0) return -1;
    int found = 0;
    for (struct ifaddrs *a = list; a; a = a->ifa_next) {
        if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
        uint32_t ip = ntohl(((struct sockaddr_in *)a->ifa_addr)->sin_addr.s_addr);
        uint32_t m = a->ifa_netmask ? ntohl(((struct sockaddr_in *)a->ifa_netmask)->sin_addr.s_addr) : 0xffffffffu;
        // Overlap of the two networks: either contains the other's base.
        uint32_t common = m & mask;
        if ((ip & common) == (net & common)) { found = 1; break; }
    }
    freeifaddrs(list);
    return found;
}

// ---- SIGBUS on guest memory (a snapshot's memory file cut short) ----------
#include <signal.h>
#include <stdint.h>
#define SWL_GUARD_MAX 8
static uintptr_t guard_start[SWL_GUARD_MAX], guard_end[SWL_GUARD_MAX];
static int guard_count;
static char guard_message[512];
static size_t guard_length;
static int guard_status;
static struct sigaction guard_previous;

static void guard_handler(int sig, siginfo_t *info, void *context) {
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < guard_count; i++) {
        if (at >= guard_start[i] && at < guard_end[i]) {
            ssize_t written = write(2, guard_message, guard_length);
            (void)written;
            _exit(guard_status);
        }
    }
    // Not guest memory: whoever handled SIGBUS before (the Swift runtime's
    // backtracer), or the default action, which the re-executed access meets.
    if ((guard_previous.sa_flags & SA_SIGINFO) && guard_previous.sa_sigaction) {
        guard_previous.sa_sigaction(sig, info, context);
    } else if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
        guard_previous.sa_handler(sig);
    } else {
        signal(SIGBUS, SIG_DFL);
    }
}

int swl_sigbus_guard(void *const *starts, const size_t *sizes, int count, const char *message, int status) {
    if (count > SWL_GUARD_MAX) { errno = EINVAL; return -1; }
    for (int i = 0; i < count; i++) {
        guard_start[i] = (uintptr_t)starts[i];
        guard_end[i] = (uintptr_t)starts[i] + sizes[i];
    }
    guard_count = count;
    guard_length = strlen(message);
    if (guard_length >= sizeof guard_message) guard_length = sizeof guard_message - 1;
    memcpy(guard_message, message, guard_length);
    guard_status = status;
    struct sigaction action = { 0 };
    action.sa_sigaction = guard_handler;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGBUS, &action, &guard_previous);
}
