/// virtio-net constants (virtio 1.2, section 5.1).
public enum VirtioNet {
    public static let deviceID: UInt32 = 1
    public static let rxQueue = 0
    public static let txQueue = 1
    public static let queueSize: UInt16 = 256
    /// `struct virtio_net_hdr` with `num_buffers`: always 12 bytes with VERSION_1.
    public static let headerSize = 12
    /// Offset of `num_buffers` in the header.
    static let numBuffersOffset = 10
    /// The largest frame a TAP hands over with TSO on: a 64 KiB IP packet,
    /// an Ethernet header and a VLAN tag, after the header.
    public static let maxFrame = headerSize + 65_535 + 14 + 4

    public static let featureCsum: UInt64 = 1 << 0
    public static let featureGuestCsum: UInt64 = 1 << 1
    public static let featureMAC: UInt64 = 1 << 5
    public static let featureGuestTSO4: UInt64 = 1 << 7
    public static let featureGuestTSO6: UInt64 = 1 << 8
    public static let featureHostTSO4: UInt64 = 1 << 11
    public static let featureHostTSO6: UInt64 = 1 << 12
    public static let featureMrgRxbuf: UInt64 = 1 << 15
}
