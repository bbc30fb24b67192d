/// virtio-vsock (virtio 1.2, section 5.10): device ID, queues, packet
/// constants, and the limits this implementation uses.
///
/// Only stream sockets are offered (no VIRTIO_VSOCK_F_SEQPACKET), as
/// Firecracker and Cloud Hypervisor do.
public enum VirtioVsock {
    /// The virtio device ID of a socket device.
    public static let deviceID: UInt32 = 19
    /// The queue size offered for each of the three queues.
    public static let queueSize: UInt16 = 256
    /// Queue 0: the driver gives receive buffers; the device fills them with packets.
    public static let rxQueue = 0
    /// Queue 1: the driver's packets for the device.
    public static let txQueue = 1
    /// Queue 2: the driver gives event buffers (transport reset).
    public static let eventQueue = 2

    /// The host's CID (VMADDR_CID_HOST).
    public static let hostCID: UInt64 = 2
    /// CIDs a guest may not have: 0 (hypervisor), 1 (local), 2 (host), and
    /// VMADDR_CID_ANY (0xffffffff).
    public static func isValidGuestCID(_ cid: UInt32) -> Bool { cid > 2 && cid != UInt32.max }

    /// Bytes of `struct virtio_vsock_hdr`.
    public static let headerSize = 44
    /// The largest payload one packet may carry (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    public static let maxPayload = 64 * 1024

    /// The receive buffer this device advertises for each connection
    /// (`buf_alloc`): the most guest data it ever holds for one connection.
    public static let bufferSize: UInt32 = 256 * 1024
    /// A CREDIT_UPDATE goes to the guest once `fwd_cnt` has moved this far
    /// since the last value the guest was told.
    public static let creditUpdateThreshold: UInt32 = 64 * 1024

    /// Host-initiated connections take local ports counting up from here
    /// (Firecracker does the same), far from the guest's well-known ports.
    public static let firstHostPort: UInt32 = 1 << 30
    /// The longest `CONNECT <port>\n` line a host client may send.
    public static let maxConnectLine = 32
    /// The most connections (established, pending and handshaking) at once.
    public static let maxConnections = 1024
    /// The most host clients in their handshake at once (sending the CONNECT
    /// line, or waiting for the guest's answer): idle clients can never take
    /// the connection slots the guest's own connections need.
    public static let maxHandshakes = 64
    /// How long a host client may take to send its CONNECT line, and the
    /// guest to answer the REQUEST that follows (Firecracker allows 2 s).
    public static let handshakeTimeoutNanos: UInt64 = 2_000_000_000
    /// How often deadlines are checked while any is pending.
    public static let deadlineTickNanos: UInt64 = 250_000_000

    /// `virtio_vsock_event.id` of VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
    public static let eventTransportReset: UInt32 = 0
    /// Bytes of `struct virtio_vsock_event` (le32 id).
    public static let eventSize = 4

    /// The configuration space: le64 guest_cid.
    static func configSpace(guestCID: UInt32) -> [UInt8] {
        // SAFETY: copies the 8 bytes of a local value.
        unsafe withUnsafeBytes(of: UInt64(guestCID).littleEndian) { unsafe Array($0) }
    }
}

/// `virtio_vsock_hdr.type`.
public enum VsockType {
    /// VIRTIO_VSOCK_TYPE_STREAM.
    public static let stream: UInt16 = 1
}

/// `virtio_vsock_hdr.op`.
public enum VsockOp: UInt16, Sendable, CaseIterable {
    /// Connect to the destination port.
    case request = 1
    /// Accept a REQUEST.
    case response = 2
    /// Refuse or end a connection (no reply to it).
    case rst = 3
    /// One or both directions are done (`flags`: `VsockShutdown`).
    case shutdown = 4
    /// Data: `len` payload bytes follow the header.
    case rw = 5
    /// The sender's `buf_alloc` / `fwd_cnt` changed.
    case creditUpdate = 6
    /// Asks for a CREDIT_UPDATE.
    case creditRequest = 7
}

/// `virtio_vsock_hdr.flags` of a SHUTDOWN packet.
public enum VsockShutdown {
    /// VIRTIO_VSOCK_SHUTDOWN_RCV: the sender will receive no more data.
    public static let receive: UInt32 = 1
    /// VIRTIO_VSOCK_SHUTDOWN_SEND: the sender will send no more data.
    public static let send: UInt32 = 2
    /// Both directions.
    public static let both: UInt32 = receive | send
}
