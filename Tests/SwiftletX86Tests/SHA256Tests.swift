import Testing
@testable import SwiftletX86

@Suite struct SHA256Tests {
    func hex(_ s: String) -> String { SHA256.hex(SHA256.hash(Array(s.utf8))) }

    @Test func fipsVectors() {
        #expect(hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
            == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }

    @Test func millionA() {
        #expect(SHA256.hex(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000)))
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func incrementalMatchesOneShot() {
        let data = Fixtures.data(count: 1000)
        for split in [0, 1, 55, 56, 63, 64, 65, 127, 500, 1000] {
            var h = SHA256()
            h.update(Array(data[0..<split]))
            h.update(Array(data[split...]))
            #expect(h.finalize() == SHA256.hash(data), "split at \(split)")
        }
        // Block-boundary lengths of the padding.
        for n in [55, 56, 57, 63, 64, 65, 119, 120] {
            var byteByByte = SHA256()
            let d = Fixtures.data(count: n)
            for b in d { byteByByte.update([b]) }
            #expect(byteByByte.finalize() == SHA256.hash(d))
        }
    }
}
