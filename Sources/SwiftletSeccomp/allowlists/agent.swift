// The guest agent's session (`agent`, `swiftlet run`): accepts the agent's
// vsock connection, sends the job, streams stdin/stdout/stderr, forwards
// signals. The base is `runtime`.
extension Allowlists {
    static let agent = """
    @runtime                               # glibc and Swift runtime basics
    poll                                   # wait on the listener, the connection, stdin, the signalfd, the stop eventfd
    accept4                                # the agent's connection
    recvfrom                               # from the agent (recv)
    sendto                                 # to the agent (send)
    read                                   # the command's stdin; the signalfd; eventfds
    write                                  # the command's stdout and stderr
    close                                  # the connection and stdin end
    getsockopt                             # SO_PEERCRED: only this process's own vsock device may be the agent's end
    shutdown                               # half-close towards the agent
    """
}
