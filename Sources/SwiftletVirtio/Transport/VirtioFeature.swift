/// The feature bits every virtio device shares (virtio 1.x, section 6), as
/// masks: the one definition the transport and each device use. A device's
/// own bits (VIRTIO_BLK_F_*, VIRTIO_NET_F_*) stay with the device.
public enum VirtioFeature {
    /// VIRTIO_F_RING_INDIRECT_DESC (bit 28): indirect descriptor tables.
    public static let ringIndirectDesc: UInt64 = 1 << 28
    /// VIRTIO_F_RING_EVENT_IDX (bit 29): `used_event` and `avail_event`.
    public static let ringEventIdx: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1 (bit 32): a virtio 1.x driver; the transport
    /// offers it for every device and refuses a driver without it.
    public static let version1: UInt64 = 1 << 32
}
