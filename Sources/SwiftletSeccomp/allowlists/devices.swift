// The device event loop (`devices`): virtio-blk requests and the vsock muxer,
// woken by ioeventfds through epoll. The base is `runtime`.
extension Allowlists {
    static let devices = """
    @runtime                               # glibc and Swift runtime basics
    epoll_wait                             # the loop itself
    epoll_ctl                              # the vsock muxer adds, changes and drops connection sockets
    read                                   # drain ioeventfds; vsock host sockets; virtio-net frames from the TAP
    write                                  # signal irqfds; vsock host sockets; virtio-net frames to the TAP
    writev                                 # virtio-net: a frame from guest buffers to the TAP
    ioctl TUNSETOFFLOAD                    # virtio-net: tell the TAP which offloads the guest accepted
    pread64                                # virtio-blk reads; copy-on-write overlay reads
    pwrite64                               # virtio-blk writes; copy-on-write overlay writes
    preadv                                 # virtio-blk scatter reads
    pwritev                                # virtio-blk scatter writes
    readv                                  # virtio-blk and vsock: host data into scattered guest buffers
    fdatasync                              # virtio-blk flush
    fallocate                              # virtio-blk discard and write-zeroes (punch holes)
    accept4                                # hybrid vsock: a host client connects to the Unix socket
    socket AF_UNIX                         # hybrid vsock: a guest connects out to PATH_<port>; Unix sockets only
    connect                                # hybrid vsock: the connect to PATH_<port>
    recvfrom                               # vsock host sockets (recv)
    sendto                                 # vsock host sockets (send)
    sendmsg                                # vsock host sockets (gathered send)
    getsockopt                             # SO_PEERCRED: hybrid vsock peers the socket's policy admits (both directions)
    timerfd_settime                        # hybrid vsock: the handshake deadline timer ticks only while a handshake is pending
    shutdown                               # vsock half-close
    close                                  # vsock connections end
    """
}
