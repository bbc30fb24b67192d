/// `struct virtio_vsock_hdr`: the 44-byte little-endian header in front of
/// every vsock packet (virtio 1.2, section 5.10.6).
public struct VsockHeader: Sendable, Equatable {
    /// The sender's CID (the guest's, or 2 for the host).
    public var srcCID: UInt64
    /// The receiver's CID.
    public var dstCID: UInt64
    /// The sender's port.
    public var srcPort: UInt32
    /// The receiver's port.
    public var dstPort: UInt32
    /// Payload bytes after the header.
    public var len: UInt32
    /// The socket type; only `VsockType.stream` is supported.
    public var type: UInt16
    /// The raw op; `VsockOp(rawValue:)` names it.
    public var op: UInt16
    /// Op-specific flags (SHUTDOWN: `VsockShutdown`).
    public var flags: UInt32
    /// The sender's receive buffer for this connection.
    public var bufAlloc: UInt32
    /// Bytes the sender has consumed from that buffer, ever (wrapping).
    public var fwdCnt: UInt32

    /// A header with a known op; a stream packet without payload unless told otherwise.
    public init(srcCID: UInt64, dstCID: UInt64, srcPort: UInt32, dstPort: UInt32, len: UInt32 = 0,
                type: UInt16 = VsockType.stream, op: VsockOp, flags: UInt32 = 0, bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0) {
        self.init(srcCID: srcCID, dstCID: dstCID, srcPort: srcPort, dstPort: dstPort, len: len,
                  type: type, rawOp: op.rawValue, flags: flags, bufAlloc: bufAlloc, fwdCnt: fwdCnt)
    }

    /// A header with any op value, known or not (tests send unknown ones).
    public init(srcCID: UInt64, dstCID: UInt64, srcPort: UInt32, dstPort: UInt32, len: UInt32,
                type: UInt16, rawOp: UInt16, flags: UInt32, bufAlloc: UInt32, fwdCnt: UInt32) {
        self.srcCID = srcCID
        self.dstCID = dstCID
        self.srcPort = srcPort
        self.dstPort = dstPort
        self.len = len
        self.type = type
        self.op = rawOp
        self.flags = flags
        self.bufAlloc = bufAlloc
        self.fwdCnt = fwdCnt
    }

    /// Field offsets in the wire format.
    enum Offset {
        static let srcCID = 0, dstCID = 8, srcPort = 16, dstPort = 20, len = 24
        static let type = 28, op = 30, flags = 32, bufAlloc = 36, fwdCnt = 40
    }

    /// Decodes the first 44 bytes of `bytes`; nil when there are fewer.
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= VirtioVsock.headerSize else { return nil }
        func le<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            // SAFETY: every field's offset plus size is inside the 44-byte header, whose length `init` checked.
            unsafe T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        }
        self.init(srcCID: le(Offset.srcCID, UInt64.self), dstCID: le(Offset.dstCID, UInt64.self),
                  srcPort: le(Offset.srcPort, UInt32.self), dstPort: le(Offset.dstPort, UInt32.self),
                  len: le(Offset.len, UInt32.self), type: le(Offset.type, UInt16.self),
                  rawOp: le(Offset.op, UInt16.self), flags: le(Offset.flags, UInt32.self),
                  bufAlloc: le(Offset.bufAlloc, UInt32.self), fwdCnt: le(Offset.fwdCnt, UInt32.self))
    }

    /// Decodes the first 44 bytes of `bytes`; nil when there are fewer.
    public init?(_ bytes: [UInt8]) {
        // SAFETY: the array's bytes, lent for the call; `VsockHeader.init` checks their length.
        guard let h = unsafe bytes.withUnsafeBytes({ unsafe VsockHeader($0) }) else { return nil }
        self = h
    }

    /// Encodes into the first 44 bytes of `into`, which must hold them.
    public func encode(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= VirtioVsock.headerSize, "vsock header needs 44 bytes")
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            // SAFETY: every field's offset plus size is inside the header, and `encode` is handed at least `size`
            // bytes.
            unsafe bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        put(srcCID, Offset.srcCID)
        put(dstCID, Offset.dstCID)
        put(srcPort, Offset.srcPort)
        put(dstPort, Offset.dstPort)
        put(len, Offset.len)
        put(type, Offset.type)
        put(op, Offset.op)
        put(flags, Offset.flags)
        put(bufAlloc, Offset.bufAlloc)
        put(fwdCnt, Offset.fwdCnt)
    }

    /// The 44 wire bytes.
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: VirtioVsock.headerSize)
        // SAFETY: `out` holds exactly the header's size.
        unsafe out.withUnsafeMutableBytes { unsafe encode(into: $0) }
        return out
    }

    /// The op, when it is one the spec defines.
    public var knownOp: VsockOp? { VsockOp(rawValue: op) }

    /// The RST that answers this packet: addresses swapped, no payload.
    /// Why swapped: the receiver matches a packet to its socket by the
    /// packet's source as the remote address.
    public func resetReply() -> VsockHeader {
        VsockHeader(srcCID: dstCID, dstCID: srcCID, srcPort: dstPort, dstPort: srcPort, op: .rst)
    }
}
