/// A device on an I/O bus (port I/O or MMIO), addressed by offset from its base.
///
/// Accesses may come from several vCPU threads at once: devices guard their
/// own state. `data` is the guest's access: 1, 2, 4 or 8 bytes, little-endian.
public protocol BusDevice: AnyObject, Sendable {
    /// Fills `data` for a guest read at `offset`.
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    /// Applies a guest write of `data` at `offset`.
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// Why a device could not be placed on a bus.
public enum BusError: Error, CustomStringConvertible, Sendable, Equatable {
    case overlap(base: UInt64, size: UInt64)
    case emptyRange

    public var description: String {
        switch self {
        case let .overlap(base, size): return "bus range 0x\(String(base, radix: 16))+0x\(String(size, radix: 16)) overlaps another device"
        case .emptyRange: return "bus range is empty"
        }
    }
}

/// An address space (port I/O or MMIO) mapping ranges to devices.
///
/// Built once, then immutable: lookups need no lock.
public struct Bus: Sendable {
    @usableFromInline struct Entry: Sendable {
        @usableFromInline let base: UInt64
        @usableFromInline let size: UInt64
        @usableFromInline let device: any BusDevice
    }
    @usableFromInline var entries: [Entry] = []

    public init() {}

    /// Places `device` at `[base, base+size)`.
    public mutating func insert(_ device: any BusDevice, base: UInt64, size: UInt64) throws(BusError) {
        guard size > 0, base &+ size > base else { throw .emptyRange }
        for e in entries where base < e.base + e.size && e.base < base + size {
            throw .overlap(base: base, size: size)
        }
        entries.append(Entry(base: base, size: size, device: device))
        entries.sort { $0.base < $1.base }
    }

    /// The device covering `address` and the offset into it.
    @inlinable
    public func resolve(_ address: UInt64) -> (device: any BusDevice, offset: UInt64)? {
        // Binary search: the last entry whose base is <= address.
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if entries[mid].base <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let e = entries[lo - 1]
        let offset = address - e.base
        return offset < e.size ? (e.device, offset) : nil
    }

    /// Dispatches a read. Unclaimed addresses read as all ones, like an empty ISA bus.
    /// Returns false when no device claimed the address.
    @discardableResult
    public func read(_ address: UInt64, _ data: UnsafeMutableRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else {
            for i in data.indices { data[i] = 0xff }
            return false
        }
        device.read(offset: offset, data: data)
        return true
    }

    /// Dispatches a write. Returns false when no device claimed the address.
    @discardableResult
    public func write(_ address: UInt64, _ data: UnsafeRawBufferPointer) -> Bool {
        guard let (device, offset) = resolve(address) else { return false }
        device.write(offset: offset, data: data)
        return true
    }
}
