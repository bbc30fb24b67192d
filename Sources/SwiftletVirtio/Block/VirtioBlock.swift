/// virtio-blk (virtio 1.x, section 5.2): device ID, feature bits, request
/// types and statuses, and the limits this implementation advertises.
public enum VirtioBlock {
    /// The virtio device ID of a block device.
    public static let deviceID: UInt32 = 2
    /// The queue size offered to the driver (one request queue).
    public static let queueSize: UInt16 = 256
    /// Bytes per sector: the unit of `capacity` and of request sectors, whatever `blk_size` says.
    public static let sectorSize = 512
    /// Bytes of a GET_ID answer.
    public static let idLength = 20

    // Feature bits, as masks.
    /// VIRTIO_BLK_F_SEG_MAX (bit 2): `seg_max` is valid.
    public static let featureSegMax: UInt64 = 1 << 2
    /// VIRTIO_BLK_F_RO (bit 5): the device is read-only.
    public static let featureRO: UInt64 = 1 << 5
    /// VIRTIO_BLK_F_BLK_SIZE (bit 6): `blk_size` is valid.
    public static let featureBlkSize: UInt64 = 1 << 6
    /// VIRTIO_BLK_F_FLUSH (bit 9): FLUSH requests are supported.
    public static let featureFlush: UInt64 = 1 << 9
    /// VIRTIO_BLK_F_DISCARD (bit 13): DISCARD requests are supported.
    public static let featureDiscard: UInt64 = 1 << 13
    /// VIRTIO_BLK_F_WRITE_ZEROES (bit 14): WRITE_ZEROES requests are supported.
    public static let featureWriteZeroes: UInt64 = 1 << 14

    // Request types (the `type` field of the request header).
    public static let requestIn: UInt32 = 0
    public static let requestOut: UInt32 = 1
    public static let requestFlush: UInt32 = 4
    public static let requestGetID: UInt32 = 8
    public static let requestDiscard: UInt32 = 11
    public static let requestWriteZeroes: UInt32 = 13

    // Request status bytes.
    public static let statusOK: UInt8 = 0
    public static let statusIOError: UInt8 = 1
    public static let statusUnsupported: UInt8 = 2

    /// The UNMAP flag of a discard / write-zeroes segment.
    public static let segmentFlagUnmap: UInt32 = 1
    /// Bytes of a request header: le32 type, le32 reserved, le64 sector.
    public static let headerSize = 16
    /// Bytes of a discard / write-zeroes segment: le64 sector, le32 num_sectors, le32 flags.
    public static let segmentSize = 16

    /// `seg_max`: data buffers per request, leaving room for header and status
    /// in a ring-sized chain (drivers size indirect tables from this).
    public static let segMax = UInt32(queueSize) - 2
    /// `max_discard_sectors` and `max_write_zeroes_sectors`: 2 GiB per request.
    public static let maxDiscardSectors: UInt32 = 1 << 22
    /// `max_discard_seg` and `max_write_zeroes_seg`.
    public static let maxDiscardSegments: UInt32 = 1
    /// `discard_sector_alignment`, in sectors: 4 KiB, a file system block.
    public static let discardSectorAlignment: UInt32 = 8

    /// Byte offsets in `struct virtio_blk_config`.
    enum ConfigOffset {
        static let capacity = 0                 // le64
        static let sizeMax = 8                  // le32
        static let segMax = 12                  // le32
        static let geometry = 16                // le16 cylinders, u8 heads, u8 sectors
        static let blkSize = 20                 // le32
        static let topology = 24                // 8 bytes
        static let writeback = 32               // u8
        static let numQueues = 34               // le16
        static let maxDiscardSectors = 36       // le32
        static let maxDiscardSeg = 40           // le32
        static let discardSectorAlignment = 44  // le32
        static let maxWriteZeroesSectors = 48   // le32
        static let maxWriteZeroesSeg = 52       // le32
        static let writeZeroesMayUnmap = 56     // u8, then 3 unused bytes
        /// Through `unused1`; later fields (secure erase, zoned) read as 0.
        static let size = 60
    }

    /// The configuration space of a disk of `sectors` sectors.
    static func configSpace(sectors: UInt64, readOnly: Bool) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: ConfigOffset.size)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            for i in 0..<MemoryLayout<T>.size { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        }
        put(sectors, at: ConfigOffset.capacity)
        put(segMax, at: ConfigOffset.segMax)
        put(UInt32(sectorSize), at: ConfigOffset.blkSize)
        put(UInt16(1), at: ConfigOffset.numQueues)
        if !readOnly {
            put(maxDiscardSectors, at: ConfigOffset.maxDiscardSectors)
            put(maxDiscardSegments, at: ConfigOffset.maxDiscardSeg)
            put(discardSectorAlignment, at: ConfigOffset.discardSectorAlignment)
            put(maxDiscardSectors, at: ConfigOffset.maxWriteZeroesSectors)
            put(maxDiscardSegments, at: ConfigOffset.maxWriteZeroesSeg)
            put(UInt8(1), at: ConfigOffset.writeZeroesMayUnmap)
        }
        return bytes
    }
}
