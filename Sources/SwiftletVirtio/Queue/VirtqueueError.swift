import SwiftletMemory

/// One of the three areas of a split virtqueue in guest memory.
public enum VirtqueuePart: Sendable, Equatable, CustomStringConvertible {
    case descriptorTable
    case availRing
    case usedRing

    public var description: String {
        switch self {
        case .descriptorTable: return "descriptor table"
        case .availRing: return "available ring"
        case .usedRing: return "used ring"
        }
    }
}

/// Why a virtqueue operation failed. Every case is something the guest did
/// (or a caller asked for bytes a chain does not have); none is a host fault.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The queue size is zero, not a power of two, or above the device's maximum.
    case invalidSize(UInt16, max: UInt16)
    /// A ring address does not meet its alignment (descriptors 16, available 2, used 4).
    case misaligned(VirtqueuePart, address: UInt64)
    /// A ring does not lie inside one guest memory region.
    case ringOutOfBounds(VirtqueuePart, address: UInt64, length: Int)
    /// The driver moved the available index more than a queue size past what
    /// the device has consumed. The queue is unusable until the driver resets it.
    case availIndexJump(availIndex: UInt16, nextAvail: UInt16, size: UInt16)
    /// A descriptor chain breaks the rules. The available entry has been
    /// consumed; `head` is the chain's head index when it is a valid one.
    case malformedChain(head: UInt16?, String)
    /// `pushUsed` was given a head index past the queue size.
    case invalidUsedHead(UInt16, size: UInt16)
    /// A read or write asked for bytes past the end of the chain's readable or writable part.
    case outOfRange(offset: Int, count: Int, length: Int)
    /// A guest buffer does not lie inside guest memory.
    case memory(GuestMemoryError)

    /// The head of the chain a `.malformedChain` error is about, when it is a
    /// valid index: give it back with `pushUsed(head:length: 0)` so the driver
    /// can fail that request. Nil for every other error.
    public var head: UInt16? {
        if case let .malformedChain(head, _) = self { return head }
        return nil
    }

    public var description: String {
        switch self {
        case let .invalidSize(size, max):
            return "virtqueue size \(size) is invalid (must be a power of two from 1 to \(max))"
        case let .misaligned(part, address):
            return "virtqueue \(part) at 0x\(String(address, radix: 16)) is misaligned"
        case let .ringOutOfBounds(part, address, length):
            return "virtqueue \(part) at 0x\(String(address, radix: 16)) (\(length) bytes) is outside guest memory"
        case let .availIndexJump(availIndex, nextAvail, size):
            return "virtqueue available index jumped to \(availIndex) from \(nextAvail), more than the queue size \(size)"
        case let .malformedChain(head, why):
            let at = head.map { " at head \($0)" } ?? ""
            return "malformed descriptor chain\(at): \(why)"
        case let .invalidUsedHead(head, size):
            return "used head \(head) is past the queue size \(size)"
        case let .outOfRange(offset, count, length):
            return "descriptor chain access of \(count) bytes at offset \(offset) is past its length \(length)"
        case let .memory(e):
            return "descriptor chain: \(e)"
        }
    }
}
