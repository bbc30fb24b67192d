import Foundation
import Testing
@testable import swiftletd

@Suite struct JSONLogLineTests {
    func parse(_ line: [UInt8]) throws -> [String: Any] {
        #expect(line.last == 0x0a && line.dropLast().allSatisfy { $0 != 0x0a }, "one line")
        return try #require(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
    }

    @Test func everyValueRoundTripsKeysSorted() throws {
        let tricky = "quote \" backslash \\ newline \n tab \t cr \r nul \u{0} bell \u{7} unit \u{1f} del \u{7f} é 🙂 \u{2028}"
        let fields = [("msg", tricky), ("zeta", "z"), ("alpha", "\\\""), ("job", "")]
        let line = JSONLogHandler.line(ts: 1764800000.123456, fields: fields)
        let object = try parse(line)
        #expect(object["msg"] as? String == tricky)
        #expect(object["alpha"] as? String == "\\\"")
        #expect(object["job"] as? String == "")
        #expect(object["zeta"] as? String == "z")
        #expect((object["ts"] as? Double).map { abs($0 - 1764800000.123456) < 1e-6 } == true)
        let text = String(decoding: line, as: UTF8.self)
        let keys = ["alpha", "job", "msg", "ts", "zeta"].map { text.range(of: "\"\($0)\":")!.lowerBound }
        #expect(keys == keys.sorted(), "keys in order: \(text)")
    }

    @Test func noFieldsStillALine() throws {
        let object = try parse(JSONLogHandler.line(ts: 0, fields: []))
        #expect(object.count == 1 && object["ts"] as? Double == 0)
    }
}
