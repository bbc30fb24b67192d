import Glibc
import SwiftletMemory
import SwiftletSys

/// Why a disk image could not be opened.
public enum BlockError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The image does not exist.
    case notFound(String)
    /// The image cannot be opened for writing (EACCES, EROFS, or EPERM for an immutable file) and the drive was not read-only.
    case readOnlyImage(String)
    /// Another drive or process holds a conflicting lock on the image.
    case inUse(String)
    /// The image's size is not a whole number of 512-byte sectors.
    case badSize(String, size: Int64)
    /// The path is neither a regular file nor a block device.
    case notAnImage(String)
    /// The drive's serial is longer than 20 bytes.
    case invalidID(String)
    /// The drive was asked to be both read-only and ephemeral (ephemeral
    /// drives are writable; their writes are dropped at the end).
    case readOnlyEphemeral(String)
    /// The overlay of an ephemeral drive could not be created.
    case overlay(String, SystemError)
    /// Any other failure of the call named in the error.
    case system(SystemError)

    public var description: String {
        switch self {
        case let .notFound(path): return "disk image \(path) does not exist"
        case let .readOnlyImage(path): return "disk image \(path) is read-only; add ,ro"
        case let .inUse(path): return "disk image \(path) is already in use by another drive or process"
        case let .badSize(path, size): return "disk image \(path) is \(size) bytes, not a multiple of 512"
        case let .notAnImage(path): return "disk image \(path) is not a regular file or block device"
        case let .invalidID(id): return "drive id \"\(id)\" is longer than 20 bytes"
        case let .readOnlyEphemeral(path): return "disk image \(path): ro and ephemeral exclude each other (an ephemeral drive is writable, its writes dropped at exit)"
        case let .overlay(path, e): return "disk image \(path): cannot create the ephemeral overlay: \(e)"
        case let .system(e): return "disk image: \(e)"
        }
    }
}

/// A disk image behind a virtio-blk device: a raw image, or an ephemeral
/// drive (a read-only base under a per-run copy-on-write overlay).
///
/// Requests are served with positioned I/O straight between the files and
/// guest memory. The VMM calls `handle` on its device event loop thread; a
/// raw drive may also be served from several threads at once (one per
/// queue), and an ephemeral one serializes its requests on a mutex.
public final class BlockDevice: VirtioDevice, Sendable {
    /// The image path, for messages.
    public let path: String
    /// Capacity in 512-byte sectors.
    public let sectors: UInt64
    /// Capacity in bytes.
    public var capacityBytes: UInt64 { sectors * UInt64(VirtioBlock.sectorSize) }
    /// Whether the guest may only read.
    public let readOnly: Bool
    /// Whether the guest's writes go to a per-run overlay, leaving the image unchanged.
    public let ephemeral: Bool
    /// The GET_ID answer: 20 bytes, NUL-padded.
    public let id: [UInt8]
    /// Where the bytes live; holds the image open, and its flock, until the device goes away.
    let store: BlockStore
    /// `virtio_blk_config`, built once: nothing in it changes.
    private let config: [UInt8]

    /// Opens a raw image and locks it: exclusively when writable, shared when
    /// read-only, so no image is attached writable twice.
    ///
    /// An `ephemeral` drive is writable, but its image is only the base: it is
    /// opened read-only and locked shared (so any number of runs share it and
    /// nobody attaches it writable meanwhile), and the guest's writes go to an
    /// unlinked overlay created in `overlayDirectory` (default `$TMPDIR`, else
    /// /tmp; a memfd where that cannot hold one) that vanishes with the
    /// device or the process, however it ends. It cannot be `readOnly` too.
    ///
    /// `id` is the serial the guest sees (at most 20 bytes); by default it is
    /// derived from the image's (the base's) device and inode numbers.
    public init(path: String, readOnly: Bool, ephemeral: Bool = false, id: String?,
                overlayDirectory: String? = nil) throws(BlockError) {
        if let id, id.utf8.count > VirtioBlock.idLength { throw .invalidID(id) }
        guard !(readOnly && ephemeral) else { throw .readOnlyEphemeral(path) }
        // The image itself is only read when the drive is read-only or ephemeral.
        let shared = readOnly || ephemeral
        let file = try Self.open(path, readOnly: shared)
        let fd = file.raw
        var st = stat()
        // SAFETY: `st` is a local stat buffer that fstat fills.
        guard unsafe fstat(fd, &st) == 0 else { throw .system(.last("fstat(\(path))")) }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { throw .notAnImage(path) }
        // lseek rather than st_size: it also sizes block devices.
        let size = Int64(lseek(fd, 0, SEEK_END))
        guard size >= 0 else { throw .system(.last("lseek(\(path))")) }
        guard size % Int64(VirtioBlock.sectorSize) == 0 else { throw .badSize(path, size: size) }
        let lock = (shared ? LOCK_SH : LOCK_EX) | LOCK_NB
        do {
            _ = try retryingEINTR("flock(\(path))") { flock(fd, lock) }
        } catch {
            if error.errno == EWOULDBLOCK { throw .inUse(path) }
            throw .system(error)
        }
        var serial = Array((id ?? Self.defaultID(st)).utf8.prefix(VirtioBlock.idLength))
        serial += [UInt8](repeating: 0, count: VirtioBlock.idLength - serial.count)

        if ephemeral {
            store = .copyOnWrite(try CopyOnWriteStore(base: file, size: size, directory: overlayDirectory, path: path))
        } else {
            store = .raw(file)
        }
        self.path = path
        self.sectors = UInt64(size) / UInt64(VirtioBlock.sectorSize)
        self.readOnly = readOnly
        self.ephemeral = ephemeral
        self.id = serial
        self.config = VirtioBlock.configSpace(sectors: sectors, readOnly: readOnly)
    }

    /// Opens the image, telling a missing or read-only file apart from other failures.
    private static func open(_ path: String, readOnly: Bool) throws(BlockError) -> OwnedFD {
        do {
            return try OwnedFD(opening: path, flags: readOnly ? O_RDONLY : O_RDWR)
        } catch {
            switch error.errno {
            case ENOENT: throw .notFound(path)
            case EACCES where !readOnly, EROFS where !readOnly, EPERM where !readOnly: throw .readOnlyImage(path)
            default: throw .system(error)
            }
        }
    }

    /// The image's descriptor (an ephemeral drive's base), for checks that
    /// must be made on the file the drive reads rather than on its path.
    public var imageFD: Int32 {
        switch store {
        case .raw(let fd): return fd.raw
        case .copyOnWrite(let cow): return cow.base.raw
        }
    }

    /// The overlay's descriptor when the drive is ephemeral (for tests).
    var overlayFD: Int32? {
        switch store {
        case .raw: return nil
        case .copyOnWrite(let cow): return cow.overlay.raw
        }
    }

    /// "<dev>-<inode>" in hex, keeping the (more distinctive) tail when longer than 20 bytes.
    private static func defaultID(_ st: stat) -> String {
        let text = String(UInt64(st.st_dev), radix: 16) + "-" + String(UInt64(st.st_ino), radix: 16)
        return String(text.utf8.suffix(VirtioBlock.idLength))!
    }

    /// The features this device offers.
    public var deviceFeatures: UInt64 {
        var features = VirtioFeature.version1 | VirtioBlock.featureFlush | VirtioBlock.featureBlkSize
            | VirtioBlock.featureSegMax | VirtioFeature.ringEventIdx | VirtioFeature.ringIndirectDesc
        if readOnly {
            features |= VirtioBlock.featureRO
        } else {
            features |= VirtioBlock.featureDiscard | VirtioBlock.featureWriteZeroes
        }
        return features
    }

    /// Reads `virtio_blk_config` bytes at `offset`; bytes past its end read as 0.
    public func readConfig(offset: Int, into: UnsafeMutableRawBufferPointer) {
        for i in 0..<into.count {
            let (at, overflow) = offset.addingReportingOverflow(i)
            // SAFETY: `i` comes from `into.indices`.
            unsafe into[i] = !overflow && at >= 0 && at < config.count ? config[at] : 0
        }
    }
}

// MARK: - The device behind the MMIO transport

extension BlockDevice {
    public var deviceID: UInt32 { VirtioBlock.deviceID }
    /// One request queue, served on the device event loop.
    public var queueMaxSizes: [UInt16] { [VirtioBlock.queueSize] }
    /// Nothing outlives a request: a reset has nothing to drop.
    public func reset() {}

    public func serve(queue: Virtqueue, index: Int, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        try queue.drain { handle($0, memory: memory) } && queue.needsInterrupt()
    }
}
