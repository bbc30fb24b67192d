// The main (control) thread, from just before the first KVM_RUN: waits for the
// machine to end, kicks the vCPUs, joins the threads, prints the report and
// tears down. The base is `runtime`.
extension Allowlists {
    static let control = """
    @runtime                               # glibc and Swift runtime basics
    poll                                   # wait for the exit latch, a signal or the halt-probe tick
    read                                   # the exit latch's eventfd; the termination signalfd; --stats' smaps (opened before)
    write                                  # the report on stderr; eventfd signals that stop the other threads
    newfstatat                             # fstat: stdio checks stdout on its first write; teardown lstats the --vsock-uds socket before unlinking it
    lseek                                  # rewind /proc/self/smaps for --stats
    getpid                                 # pthread_kill (the vCPU kick)
    tgkill                                 # the vCPU kick (pthread_kill)
    close                                  # teardown: every descriptor of the machine
    unlink                                 # teardown: remove the --vsock-uds socket files
    ioctl TCSETS TCSETSW TCGETS KVM_GET_IRQCHIP KVM_GET_PIT2 KVM_GET_CLOCK  # restore the terminal (swiftlet boot's raw mode); a snapshot's irqchip, PIT and clock
    pwrite64                               # snapshot create: memory and state into files opened before the guest ran
    ftruncate                              # snapshot create: the memory file's size (zero pages stay holes)
    fsync                                  # snapshot create: on disk before it is published
    rmdir                                  # snapshot create: remove the directory of a snapshot that failed
    epoll_ctl                              # teardown: the vsock muxer drops connections still open (a parked agent's, after snapshot create)
    """
}
