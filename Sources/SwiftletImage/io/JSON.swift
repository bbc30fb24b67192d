// A strict JSON (RFC 8259) parser for image manifests, indexes and configs.
// The documents come from the user's image: every byte is checked, nesting is
// limited, and the parser keeps its own stack (no recursion), so no document
// can exhaust the thread's stack.

/// Why a JSON document was refused.
public enum JSONError: Error, Equatable, CustomStringConvertible {
    /// Not JSON: the byte offset of the problem and what it is.
    case syntax(offset: Int, reason: String)
    /// Arrays and objects nested deeper than the limit.
    case tooDeep
    /// A document over 16 MiB.
    case tooLarge

    public var description: String {
        switch self {
        case .syntax(let offset, let reason): return "JSON syntax error at byte \(offset): \(reason)"
        case .tooDeep: return "JSON nested too deeply"
        case .tooLarge: return "JSON document over \(JSONValue.maxDocumentSize >> 20) MiB"
        }
    }
}

/// A JSON value. Objects keep their members in document order; a key given
/// twice is kept twice, and lookups find the last.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The literal text, checked to be a JSON number.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    /// The largest document `parse` reads.
    public static var maxDocumentSize: Int { 16 << 20 }

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// Parses a whole document: one value, with whitespace around it and nothing else.
    /// Arrays and objects may nest `maxDepth` deep. Parsing does not recurse, but
    /// destroying and comparing a value do, one level per nesting level: keep
    /// `maxDepth` small (the default suits every OCI document).
    public static func parse(_ bytes: [UInt8], maxDepth: Int = 64) throws(JSONError) -> JSONValue {
        guard bytes.count <= maxDocumentSize else { throw .tooLarge }
        var parser = JSONParser(bytes: bytes, maxDepth: maxDepth)
        return try parser.document()
    }

    /// The member `key` of an object (the last, if given twice); nil otherwise.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members.last(where: { $0.0 == key })?.1
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var array: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var object: [(String, JSONValue)]? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// The value of an integer number (no fraction or exponent) within Int64; nil otherwise.
    public var int64: Int64? {
        guard case .number(let text) = self else { return nil }
        guard !text.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) else {
            return nil
        }
        return Int64(text)
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }
}

/// The parser: one pass over the bytes with an explicit stack of open containers.
struct JSONParser {
    let bytes: [UInt8]
    let maxDepth: Int
    var i = 0

    init(bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    /// An open array or object, with what it holds so far.
    enum Frame {
        case array([JSONValue])
        case object([(String, JSONValue)], key: String)
    }

    func fail(_ reason: String, at offset: Int? = nil) -> JSONError {
        .syntax(offset: offset ?? i, reason: reason)
    }

    mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0a, 0x0d: i += 1
            default: return
            }
        }
    }

    /// The byte at `i`, after whitespace; nil at the end.
    mutating func peek() -> UInt8? {
        skipWhitespace()
        return i < bytes.count ? bytes[i] : nil
    }

    mutating func document() throws(JSONError) -> JSONValue {
        var stack: [Frame] = []
        while true {
            // A value starts here.
            guard let c = peek() else { throw fail("a value was expected, the document ended") }
            var value: JSONValue
            switch c {
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                guard stack.count < maxDepth else { throw .tooDeep }
                i += 1
                if c == UInt8(ascii: "[") {
                    if peek() == UInt8(ascii: "]") {
                        i += 1
                        value = .array([])
                    } else {
                        stack.append(.array([]))
                        continue
                    }
                } else {
                    if peek() == UInt8(ascii: "}") {
                        i += 1
                        value = .object([])
                    } else {
                        stack.append(.object([], key: try memberKey()))
                        continue
                    }
                }
            case UInt8(ascii: "\""):
                value = .string(try string())
            case UInt8(ascii: "t"):
                try literal("true")
                value = .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                value = .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                value = .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                value = .number(try number())
            default:
                throw fail("a value was expected")
            }

            // Give the value to the containers it completes, up to one that takes another.
            while true {
                guard let top = stack.popLast() else {
                    skipWhitespace()
                    guard i == bytes.count else { throw fail("bytes after the document") }
                    return value
                }
                switch top {
                case .array(var items):
                    items.append(value)
                    switch peek() {
                    case UInt8(ascii: ","):
                        i += 1
                        stack.append(.array(items))
                    case UInt8(ascii: "]"):
                        i += 1
                        value = .array(items)
                        continue
                    default:
                        throw fail("',' or ']' was expected in an array")
                    }
                case .object(var members, let key):
                    members.append((key, value))
                    switch peek() {
                    case UInt8(ascii: ","):
                        i += 1
                        stack.append(.object(members, key: try memberKey()))
                    case UInt8(ascii: "}"):
                        i += 1
                        value = .object(members)
                        continue
                    default:
                        throw fail("',' or '}' was expected in an object")
                    }
                }
                break
            }
        }
    }

    /// `"key" :`, leaving `i` at the value.
    mutating func memberKey() throws(JSONError) -> String {
        guard peek() == UInt8(ascii: "\"") else { throw fail("a member name (a string) was expected") }
        let key = try string()
        guard peek() == UInt8(ascii: ":") else { throw fail("':' was expected after a member name") }
        i += 1
        return key
    }

    mutating func literal(_ word: StaticString) throws(JSONError) {
        let n = word.utf8CodeUnitCount
        guard bytes.count - i >= n else { throw fail("an unknown literal") }
        var k = 0
        while k < n {
            // SAFETY: k < utf8CodeUnitCount, inside the static string.
            guard bytes[i + k] == word.utf8Start[k] else { throw fail("an unknown literal") }
            k += 1
        }
        i += n
    }

    /// A number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, as its text.
    mutating func number() throws(JSONError) -> String {
        let start = i
        func digits(_ p: inout JSONParser) -> Int {
            let from = p.i
            while p.i < p.bytes.count, p.bytes[p.i] >= UInt8(ascii: "0"), p.bytes[p.i] <= UInt8(ascii: "9") { p.i += 1 }
            return p.i - from
        }
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") else {
            throw fail("a digit was expected in a number")
        }
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            _ = digits(&self)
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { throw fail("a digit was expected after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { throw fail("a digit was expected in an exponent") }
        }
        return String(decoding: bytes[start..<i], as: UTF8.self)
    }

    /// A string, from its opening quote at `i`: escapes decoded, UTF-8 checked.
    mutating func string() throws(JSONError) -> String {
        let open = i
        i += 1
        var out: [UInt8] = []
        var runStart = i
        while true {
            guard i < bytes.count else { throw fail("the string is not closed", at: open) }
            let c = bytes[i]
            switch c {
            case UInt8(ascii: "\""):
                out += bytes[runStart..<i]
                i += 1
                return String(decoding: out, as: UTF8.self)  // valid UTF-8, checked below
            case UInt8(ascii: "\\"):
                out += bytes[runStart..<i]
                try escape(into: &out)
                runStart = i
            case 0..<0x20:
                throw fail("a control character in a string")
            case 0..<0x80:
                i += 1
            default:
                try utf8Sequence()
            }
        }
    }

    /// Checks one multi-byte UTF-8 sequence at `i` (no overlongs, surrogates or values past U+10FFFF).
    mutating func utf8Sequence() throws(JSONError) {
        let lead = bytes[i]
        let count: Int
        var low: UInt8 = 0x80
        var high: UInt8 = 0xbf
        switch lead {
        case 0xc2...0xdf: count = 1
        case 0xe0: count = 2; low = 0xa0
        case 0xe1...0xec, 0xee...0xef: count = 2
        case 0xed: count = 2; high = 0x9f
        case 0xf0: count = 3; low = 0x90
        case 0xf1...0xf3: count = 3
        case 0xf4: count = 3; high = 0x8f
        default: throw fail("invalid UTF-8")
        }
        guard bytes.count - i > count else { throw fail("invalid UTF-8") }
        let second = bytes[i + 1]
        guard second >= low, second <= high else { throw fail("invalid UTF-8") }
        var k = 2
        while k <= count {
            guard bytes[i + k] & 0xc0 == 0x80 else { throw fail("invalid UTF-8") }
            k += 1
        }
        i += count + 1
    }

    /// One escape at `i` (the backslash), appended as UTF-8.
    mutating func escape(into out: inout [UInt8]) throws(JSONError) {
        let at = i
        guard bytes.count - i >= 2 else { throw fail("an unfinished escape") }
        let c = bytes[i + 1]
        i += 2
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(c)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0c)
        case UInt8(ascii: "n"): out.append(0x0a)
        case UInt8(ascii: "r"): out.append(0x0d)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "u"):
            var scalar = try hex4()
            if (0xd800...0xdbff).contains(scalar) {
                // A high surrogate: a low one must follow, as another \u escape.
                guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                    throw fail("a lone surrogate", at: at)
                }
                i += 2
                let low = try hex4()
                guard (0xdc00...0xdfff).contains(low) else { throw fail("a lone surrogate", at: at) }
                scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
            } else if (0xdc00...0xdfff).contains(scalar) {
                throw fail("a lone surrogate", at: at)
            }
            // Surrogates are paired above, so the scalar is below 0x110000 and not one.
            switch scalar {
            case 0..<0x80:
                out.append(UInt8(scalar))
            case 0x80..<0x800:
                out.append(UInt8(0xc0 | scalar >> 6))
                out.append(UInt8(0x80 | scalar & 0x3f))
            case 0x800..<0x10000:
                out.append(UInt8(0xe0 | scalar >> 12))
                out.append(UInt8(0x80 | scalar >> 6 & 0x3f))
                out.append(UInt8(0x80 | scalar & 0x3f))
            default:
                out.append(UInt8(truncatingIfNeeded: 0xf0 | scalar >> 18))
                out.append(UInt8(0x80 | scalar >> 12 & 0x3f))
                out.append(UInt8(0x80 | scalar >> 6 & 0x3f))
                out.append(UInt8(0x80 | scalar & 0x3f))
            }
        default:
            throw fail("an unknown escape", at: at)
        }
    }

    /// Four hex digits at `i`.
    mutating func hex4() throws(JSONError) -> UInt32 {
        guard bytes.count - i >= 4 else { throw fail("a \\u escape needs four hex digits") }
        var v: UInt32 = 0
        for k in 0..<4 {
            let c = bytes[i + k]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A")) + 10
            default: throw fail("a \\u escape needs four hex digits")
            }
            v = v << 4 | d
        }
        i += 4
        return v
    }
}
