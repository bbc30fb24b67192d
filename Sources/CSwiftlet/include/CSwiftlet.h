// CSwiftlet: what Swift cannot import from the C headers on its own.
// - ioctl request numbers (function-like _IO/_IOR/_IOW macros),
// - _GNU_SOURCE functions missing from Glibc's module map,
// - variadic calls (prctl), signal helpers,
// - the process start timestamp, taken by a constructor before Swift runs.
#ifndef CSWIFTLET_H
#define CSWIFTLET_H

#include <stdint.h>
#include <stddef.h>
#include <signal.h>
#include <pthread.h>
#include <sys/types.h>
#include <linux/kvm.h>

// ---- KVM ioctls -------------------------------------------------------------
static const unsigned long SWL_KVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long SWL_KVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long SWL_KVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long SWL_KVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long SWL_KVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long SWL_KVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

static const unsigned long SWL_KVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long SWL_KVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long SWL_KVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long SWL_KVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long SWL_KVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long SWL_KVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long SWL_KVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long SWL_KVM_IRQFD = KVM_IRQFD;
static const unsigned long SWL_KVM_IOEVENTFD = KVM_IOEVENTFD;
static const unsigned long SWL_KVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long SWL_KVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long SWL_KVM_ENABLE_CAP = KVM_ENABLE_CAP;

static const uint32_t SWL_KVM_IOEVENTFD_FLAG_DATAMATCH = KVM_IOEVENTFD_FLAG_DATAMATCH;

static const unsigned long SWL_KVM_RUN = KVM_RUN;
static const unsigned long SWL_KVM_GET_REGS = KVM_GET_REGS;
static const unsigned long SWL_KVM_SET_REGS = KVM_SET_REGS;
static const unsigned long SWL_KVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long SWL_KVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long SWL_KVM_GET_FPU = KVM_GET_FPU;
static const unsigned long SWL_KVM_SET_FPU = KVM_SET_FPU;
static const unsigned long SWL_KVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long SWL_KVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long SWL_KVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long SWL_KVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long SWL_KVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long SWL_KVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long SWL_KVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long SWL_KVM_SET_GUEST_DEBUG = KVM_SET_GUEST_DEBUG;
static const unsigned long SWL_KVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long SWL_KVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long SWL_KVM_TRANSLATE = KVM_TRANSLATE;
static const unsigned long SWL_KVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long SWL_KVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long SWL_KVM_SET_TSC_KHZ = KVM_SET_TSC_KHZ;
static const unsigned long SWL_KVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;
// Snapshot and restore: the rest of a vCPU's and the VM's state.
static const unsigned long SWL_KVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long SWL_KVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long SWL_KVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long SWL_KVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long SWL_KVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long SWL_KVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long SWL_KVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long SWL_KVM_SET_PIT2 = KVM_SET_PIT2;

// kvm_cpuid2 and kvm_msrs end in flexible arrays, which Swift drops: these
// helpers give the entry arrays a fixed capacity Swift can see.
#define SWL_MAX_CPUID_ENTRIES 256
// Same layout as kvm_cpuid2 { nent, padding, entries[] }.
struct swl_cpuid {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[SWL_MAX_CPUID_ENTRIES];
};
#define SWL_MAX_MSR_ENTRIES 64
// Same layout as kvm_msrs { nmsrs, pad, entries[] }.
struct swl_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[SWL_MAX_MSR_ENTRIES];
};
#define SWL_MAX_MSR_INDICES 1024
// Same layout as kvm_msr_list { nmsrs, indices[] }.
struct swl_msr_list {
    uint32_t nmsrs;
    uint32_t indices[SWL_MAX_MSR_INDICES];
};

// ---- calls Swift cannot make directly ---------------------------------------
/// prctl is variadic in glibc.
int swl_prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5);
/// gettid is hidden behind _GNU_SOURCE.
pid_t swl_gettid(void);
int swl_pthread_setname(pthread_t thread, const char *name);
/// A non-blocking, close-on-exec eventfd starting at 0.
int swl_eventfd_new(void);
int swl_epoll_create(void);
/// Waits for one batch; fills parallel arrays of event masks and data words.
int swl_epoll_wait(int epfd, uint32_t *events, uint64_t *data, int max, int timeout_ms);
int swl_memfd_create(const char *name, unsigned int flags);
/// fallocate(2), hidden from Swift's Glibc module.
int swl_fallocate(int fd, int mode, int64_t offset, int64_t len);

// ---- signals ------------------------------------------------------------------
/// The real-time signal used to kick vCPU threads out of KVM_RUN.
int swl_sigrtmin(void);
/// Installs an empty handler (no SA_RESTART) so KVM_RUN returns EINTR.
int swl_install_empty_handler(int signo);
int swl_block_signal(int signo);
int swl_unblock_signal(int signo);

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (new threads inherit
/// that) and returns a signalfd that reads them.
int swl_signalfd_termination(void);
/// Reads one signal from a signalfd; returns its number, or 0.
int swl_signalfd_read(int fd);

/// CPUID on the host CPU (leaf in *eax, subleaf 0).
void swl_test_cpuid(uint32_t *eax, uint32_t *ebx, uint32_t *ecx, uint32_t *edx);

// ---- time -----------------------------------------------------------------------
/// CLOCK_MONOTONIC nanoseconds.
uint64_t swl_monotonic_ns(void);
/// CLOCK_MONOTONIC nanoseconds taken by an ELF constructor, before any Swift code ran.
uint64_t swl_process_start_ns(void);
/// Per-process CPU time in nanoseconds.
uint64_t swl_process_cpu_ns(void);

// ---- atomics on shared kvm_run bytes --------------------------------------------
static inline void swl_atomic_store_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint8_t swl_atomic_load_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

/// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC) (a _GNU_SOURCE call).
int swl_accept_nonblocking(int fd);

/// timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC).
int swl_timerfd_new(void);
/// Arms the timer to expire every `nanos` ns from now; 0 disarms it.
int swl_timerfd_every(int fd, uint64_t nanos);

/// getsockopt(SO_PEERCRED) (struct ucred is _GNU_SOURCE): the peer's pid, uid
/// and gid when it connected (for a connecting socket: the listener's at listen()).
int swl_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);

// ---- epoll with an explicit interest mask (SwiftletSys.Epoll) -----------------
// Linux ABI values, so the header needs no <sys/epoll.h>.
static const uint32_t SWL_EPOLLIN = 0x001;
static const uint32_t SWL_EPOLLOUT = 0x004;
static const uint32_t SWL_EPOLLERR = 0x008;
static const uint32_t SWL_EPOLLHUP = 0x010;
static const int SWL_EPOLL_CTL_ADD = 1;
static const int SWL_EPOLL_CTL_DEL = 2;
static const int SWL_EPOLL_CTL_MOD = 3;
/// epoll_ctl(epfd, op, fd, {events, data}).
int swl_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);

/// getrandom(buf, len, 0), retried until full; 0 on success, -1 with errno.
int swl_getrandom(void *buf, size_t len);

/// pipe2(fds, flags) (a _GNU_SOURCE call).
int swl_pipe2(int fds[2], int flags);


// ---- TAP devices and interface addresses (virtio-net) -------------------------
static const unsigned int SWL_TUN_F_CSUM = 0x01;
static const unsigned int SWL_TUN_F_TSO4 = 0x02;
static const unsigned int SWL_TUN_F_TSO6 = 0x04;
static const unsigned int SWL_TUN_F_TSO_ECN = 0x08;
/// Opens /dev/net/tun (non-blocking, close-on-exec) and attaches TAP `name`
/// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (creating it when it does not exist
/// and the caller may). An empty `name` lets the kernel pick one. The
/// interface's name goes to `out_name` (16 bytes). Returns the fd, or -1 with
/// errno (nothing left open).
int swl_tap_open(const char *name, char *out_name);
/// TUNSETVNETHDRSZ.
int swl_tap_set_vnet_hdr_size(int fd, int size);
/// TUNSETOFFLOAD with SWL_TUN_F_* flags.
int swl_tap_set_offload(int fd, unsigned int flags);
/// if_nametoindex: 0 when there is no such interface.
unsigned int swl_if_index(const char *name);
/// Gives interface `name` the IPv4 address `addr` and netmask `mask` (both
/// host byte order) and brings it up. 0, or -1 with errno.
int swl_if_set_ipv4_up(const char *name, uint32_t addr, uint32_t mask);
/// 1 when some interface has an IPv4 address inside `net`/`mask` (host byte
/// order), 0 when none, -1 with errno when getifaddrs fails.
int swl_ipv4_net_in_use(uint32_t net, uint32_t mask);


/// Turns SIGBUS on an address inside one of `count` (at most 8) ranges into
/// `message` on stderr and _exit(status): a file-backed guest memory page
/// whose file was cut short. Other SIGBUS go to the previous handler.
/// Install before any thread starts; on guest memory the handler makes no
/// system call but write and exit_group (every thread role allows both).
int swl_sigbus_guard(void *const *starts, const size_t *sizes, int count, const char *message, int status);

#endif
