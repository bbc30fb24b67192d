/// Packets for the guest that wait for rx buffers, in order.
///
/// A packet about a connection is kept as its op and the connection's tag,
/// and its header is built only when a buffer takes it, so it carries the
/// credit values of that moment; when the connection is gone by then, the
/// packet is skipped.
struct VsockPacketQueue {
    enum Packet {
        /// A complete header (RSTs, whose connection may be gone already).
        case raw(VsockHeader)
        /// Host-initiated connection request.
        case request(UInt64)
        /// Accepts a guest-initiated connection.
        case response(UInt64)
        /// Our `fwd_cnt` moved, or the guest asked.
        case creditUpdate(UInt64)
        /// We ran out of the guest's credit.
        case creditRequest(UInt64)
        /// The socket reached EOF: we send no more.
        case shutdownSend(UInt64)
    }

    private var items: [Packet] = []
    private var head = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { head == items.count }
    var first: Packet? { isEmpty ? nil : items[head] }

    mutating func append(_ packet: Packet) { items.append(packet) }

    mutating func removeFirst() {
        precondition(!isEmpty, "removeFirst on an empty packet queue")
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: items.count <= 64)
            head = 0
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }

    mutating func removeAll() {
        items = []
        head = 0
    }
}
