import Testing
@testable import SwiftletImage

@Suite struct JSONTests {
    func parse(_ text: String, maxDepth: Int = 64) throws(JSONError) -> JSONValue {
        try JSONValue.parse(Array(text.utf8), maxDepth: maxDepth)
    }

    func rejects(_ text: String, _ sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(throws: JSONError.self, "\(text)", sourceLocation: sourceLocation) { try parse(text) }
    }

    @Test func scalarsAndWhitespace() throws {
        #expect(try parse("null") == .null)
        #expect(try parse(" \t\r\n true \n") == .bool(true))
        #expect(try parse("false") == .bool(false))
        #expect(try parse("\"\"") == .string(""))
        #expect(try parse("0") == .number("0"))
        #expect(try parse("[]") == .array([]))
        #expect(try parse("{}") == .object([]))
        for bad in ["", " ", "nul", "nulll", "True", "tru", "[", "{", "]", "}", "'a'", "\u{FEFF}1", "undefined", "NaN", "\u{0B}1"] {
            rejects(bad)
        }
    }

    @Test func anOCIManifest() throws {
        let text = """
        {
          "schemaVersion": 2,
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:abc", "size": 1469},
          "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:def", "size": 3370706}
          ],
          "annotations": {"org.opencontainers.image.ref.name": "3.19"}
        }
        """
        let v = try parse(text)
        #expect(v["schemaVersion"]?.int64 == 2)
        #expect(v["config"]?["size"]?.int64 == 1469)
        #expect(v["layers"]?.array?.count == 1)
        #expect(v["layers"]?.array?.first?["digest"]?.string == "sha256:def")
        #expect(v["annotations"]?["org.opencontainers.image.ref.name"]?.string == "3.19")
        #expect(v.object?.map(\.0) == ["schemaVersion", "mediaType", "config", "layers", "annotations"])
        #expect(v["missing"] == nil)
        #expect(v["layers"]?["x"] == nil)
        #expect(v.string == nil && v.array == nil && v.bool == nil && v.int64 == nil)
    }

    @Test func duplicateKeysKeepOrderAndTheLastWins() throws {
        let v = try parse(#"{"a": 1, "b": 2, "a": 3}"#)
        #expect(v["a"]?.int64 == 3)
        #expect(v.object?.count == 3)
        #expect(v.object?.map(\.0) == ["a", "b", "a"])
        // Order matters to equality.
        #expect(try parse(#"{"a":1,"b":2}"#) != parse(#"{"b":2,"a":1}"#))
        #expect(try parse(#"{"a":[1,{"b":null}]}"#) == parse(#" { "a" : [ 1 , { "b" : null } ] } "#))
    }

    @Test func numbers() throws {
        for good in ["0", "-0", "1", "-1", "123456789012345678901234567890", "0.5", "-0.0", "1e5", "1E+5", "1e-5", "2.5E10", "0e0"] {
            #expect(try parse(good) == .number(good))
        }
        for bad in ["01", "-01", "+1", ".5", "1.", "1.e5", "1e", "1e+", "--1", "-", "0x10", "1_000", "Infinity", "-Infinity", "1 2", "00"] {
            rejects(bad)
        }
        #expect(try parse("9223372036854775807").int64 == Int64.max)
        #expect(try parse("-9223372036854775808").int64 == Int64.min)
        #expect(try parse("9223372036854775808").int64 == nil)
        #expect(try parse("-0").int64 == 0)
        #expect(try parse("1.0").int64 == nil)
        #expect(try parse("1e2").int64 == nil)
        #expect(try parse("\"1\"").int64 == nil)
    }

    @Test func stringEscapes() throws {
        #expect(try parse(#""a\"b\\c\/d\be\ff\ng\rh\ti""#) == .string("a\"b\\c/d\u{8}e\u{C}f\ng\rh\ti"))
        #expect(try parse(#""\u0041\u00e9\u20AC\u0000""#) == .string("A\u{E9}\u{20AC}\u{0}"))
        // A surrogate pair is one scalar.
        #expect(try parse(#""\ud83d\ude00""#) == .string("\u{1F600}"))
        #expect(try parse(#""\uDBFF\uDFFF""#) == .string("\u{10FFFF}"))
        // Lone surrogates, in either order, at the end, or before a non-escape.
        for bad in [#""\ud83d""#, #""\ude00""#, #""\ude00\ud83d""#, #""\ud83d\u0041""#, #""\ud83dx""#, #""\ud83d\""#, #""\ud83d\n""#] {
            #expect(throws: JSONError.syntax(offset: 1, reason: "a lone surrogate"), "\(bad)") { try parse(bad) }
        }
        for bad in [#""\x""#, #""\u12""#, #""\u12g4""#, #""\"#, #""\u"#, #""abc"#, #""\'""#, #""\U0041""#] {
            rejects(bad)
        }
    }

    @Test func controlCharactersAndUTF8() throws {
        #expect(throws: JSONError.syntax(offset: 2, reason: "a control character in a string")) { try parse("\"a\nb\"") }
        rejects("\"\t\"")
        rejects("\"\u{0}\"")
        #expect(try parse("\"\u{7F}\"") == .string("\u{7F}"))
        // Valid multi-byte UTF-8, at each length.
        #expect(try parse("\"\u{E9}\u{20AC}\u{1F600}\u{10FFFF}\"") == .string("\u{E9}\u{20AC}\u{1F600}\u{10FFFF}"))
        // Invalid: a lone continuation, overlongs, a UTF-8 surrogate, past U+10FFFF, cut short, bad continuation.
        let bad: [[UInt8]] = [[0x80], [0xc0, 0x80], [0xc1, 0xbf], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf0, 0x80, 0x80, 0x80],
                              [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xff], [0xe2, 0x82], [0xc3, 0x28], [0xe2, 0x28, 0xac]]
        for b in bad {
            #expect(throws: JSONError.syntax(offset: 1, reason: "invalid UTF-8"), "\(b)") { try JSONValue.parse([0x22] + b + [0x22]) }
        }
        // Invalid UTF-8 outside a string is just not JSON.
        #expect(throws: JSONError.self) { try JSONValue.parse([0xff]) }
    }

    @Test func nestingLimit() throws {
        func nested(_ depth: Int) -> String { String(repeating: "[", count: depth) + String(repeating: "]", count: depth) }
        #expect(try parse(nested(64)) != .null)
        #expect(throws: JSONError.tooDeep) { try parse(nested(65)) }
        #expect(throws: JSONError.tooDeep) { try parse(String(repeating: "{\"a\":", count: 65) + "1" + String(repeating: "}", count: 65)) }
        #expect(throws: JSONError.tooDeep) { try parse("[[[1]]]", maxDepth: 2) }
        #expect(try parse("[[1]]", maxDepth: 2) == .array([.array([.number("1")])]))
        #expect(throws: JSONError.tooDeep) { try parse("[]", maxDepth: 0) }
        #expect(try parse("1", maxDepth: 0) == .number("1"))
        // Far past any stack: refused by the limit; parsing itself does not recurse.
        let deep = nested(100_000)
        #expect(throws: JSONError.tooDeep) { try parse(deep) }
        #expect(try parse(nested(1000), maxDepth: 1000) != .null)
        // Deep but unterminated: an error, not a crash.
        #expect(throws: JSONError.self) { try parse(String(repeating: "[", count: 100_000), maxDepth: 1_000_000) }
    }

    @Test func trailingGarbageAndStructure() throws {
        for bad in ["1 2", "{} {}", "[] x", "{\"a\":1}}", "[1,]", "[,1]", "[1 2]", "{\"a\" 1}", "{\"a\":}", "{\"a\":1,}", "{a:1}",
                    "{1:1}", "{\"a\":1 \"b\":2}", "[1]]", "\"a\" \"b\"", "[\"a\":1]", "{\"a\",1}", "nullx", "[1,\n"] {
            rejects(bad)
        }
        #expect(try parse(" [1 , 2 ]\n\n") == .array([.number("1"), .number("2")]))
        #expect(throws: JSONError.syntax(offset: 2, reason: "bytes after the document")) { try parse("1 x") }
    }

    @Test func documentSizeLimit() throws {
        // Exactly 16 MiB is read; one byte more is refused before parsing.
        var big = [UInt8](repeating: 0x20, count: 16 << 20)
        big[0] = UInt8(ascii: "1")
        #expect(try JSONValue.parse(big) == .number("1"))
        big.append(0x20)
        #expect(throws: JSONError.tooLarge) { try JSONValue.parse(big) }
    }

    @Test func accessorsAndEquality() throws {
        let v = try parse(#"[true, "s", {"k": false}, null]"#)
        #expect(v.array?[0].bool == true)
        #expect(v.array?[1].string == "s")
        #expect(v.array?[2]["k"]?.bool == false)
        #expect(v.array?[3] == .null)
        #expect(v.array?[2].object?.first?.0 == "k")
        #expect(JSONValue.object([("a", .null)]) != .object([("b", .null)]))
        #expect(JSONValue.object([("a", .null)]) != .object([("a", .null), ("a", .null)]))
        #expect(JSONValue.number("1") != .number("1.0"))
        #expect(JSONValue.array([]) != .object([]))
        #expect(JSONError.syntax(offset: 3, reason: "x").description.contains("byte 3"))
    }
}
