import SwiftletVirtio
import Testing

@Suite("Vsock packet header and CONNECT line")
struct VsockProtocolTests {
    @Test func headerLayoutIsLittleEndianAt44Bytes() throws {
        let h = VsockHeader(srcCID: 0x0102_0304_0506_0708, dstCID: 2, srcPort: 0x1122_3344, dstPort: 0x5566_7788,
                            len: 0x99aa_bbcc, op: .creditUpdate, flags: 3, bufAlloc: 0x0004_0000, fwdCnt: 0xdead_beef)
        let bytes = h.bytes
        #expect(bytes.count == 44)
        #expect(Array(bytes[0..<8]) == [8, 7, 6, 5, 4, 3, 2, 1])
        #expect(Array(bytes[8..<16]) == [2, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(bytes[16..<20]) == [0x44, 0x33, 0x22, 0x11])
        #expect(Array(bytes[20..<24]) == [0x88, 0x77, 0x66, 0x55])
        #expect(Array(bytes[24..<28]) == [0xcc, 0xbb, 0xaa, 0x99])
        #expect(Array(bytes[28..<30]) == [1, 0]) // type STREAM
        #expect(Array(bytes[30..<32]) == [6, 0]) // op CREDIT_UPDATE
        #expect(Array(bytes[32..<36]) == [3, 0, 0, 0])
        #expect(Array(bytes[36..<40]) == [0, 0, 4, 0])
        #expect(Array(bytes[40..<44]) == [0xef, 0xbe, 0xad, 0xde])
        #expect(VsockHeader(bytes) == h)
        #expect(VsockHeader(Array(bytes[0..<43])) == nil)
    }

    @Test func resetReplySwapsAddresses() {
        let h = VsockHeader(srcCID: 3, dstCID: 9, srcPort: 1000, dstPort: 80, len: 5, op: .rw, bufAlloc: 7, fwdCnt: 8)
        let r = h.resetReply()
        #expect(r.srcCID == 9 && r.dstCID == 3 && r.srcPort == 80 && r.dstPort == 1000)
        #expect(r.knownOp == .rst && r.len == 0 && r.type == VsockType.stream)
    }

    @Test func connectLineParsing() {
        func parse(_ s: String) -> VsockConnectLine.Parse { VsockConnectLine.parse(Array(s.utf8)) }
        #expect(parse("CONNECT 1234\n") == .port(1234))
        #expect(parse("connect 52\n") == .port(52))
        #expect(parse("CONNECT 4294967295\r\n") == .port(4_294_967_295))
        #expect(parse("CONNECT  7 \n") == .port(7))
        #expect(parse("CONNECT 12") == .incomplete)
        #expect(parse("") == .incomplete)
        #expect(parse("CONNECT 4294967296\n") == .invalid)
        #expect(parse("CONNECT -1\n") == .invalid)
        #expect(parse("CONNECT +1\n") == .invalid)
        #expect(parse("CONNECT\n") == .invalid)
        #expect(parse("CONNECT 1 2\n") == .invalid)
        #expect(parse("HELLO 1\n") == .invalid)
        #expect(parse("\n") == .invalid)
        #expect(parse(String(repeating: "x", count: 32)) == .invalid)
        #expect(parse("CONNECT 000000000000000000001\n") == .invalid) // 33 bytes with the newline
        #expect(VsockConnectLine.parse([0xff, 0xfe, 0x0a]) == .invalid)
        #expect(VsockConnectLine.okLine(hostPort: 1_073_741_824) == Array("OK 1073741824\n".utf8))
    }

    @Test func guestCIDRange() {
        for bad: UInt32 in [0, 1, 2, .max] { #expect(!VirtioVsock.isValidGuestCID(bad)) }
        for good: UInt32 in [3, 42, .max - 1] { #expect(VirtioVsock.isValidGuestCID(good)) }
    }
}
