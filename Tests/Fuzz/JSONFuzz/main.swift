// libFuzzer harness for the JSON parser of image manifests and configs.
//
// Input: [depth u8][document]. The document is parsed with maxDepth depth % 80.
// Any input must give a JSONError or a value, never a trap or an access outside
// memory. A value must nest no deeper than maxDepth, and parse again with
// maxDepth exactly its depth (one less: .tooDeep). Written back out (strings
// escaped minimally, numbers as their text, members in order, duplicates kept)
// it must parse to the same value, and writing that gives the same bytes.
// int64 must agree with Int64(text) for integer literals and be nil otherwise;
// an object lookup must find the last member of that name.
// Build and run with `FUZZ_TARGET=json Tests/Fuzz/run.sh`.
import SwiftletImage

/// Nesting depth: scalars 0, an array or object one more than its deepest member.
func depth(_ v: JSONValue) -> Int {
    switch v {
    case .array(let items): return 1 + (items.map(depth).max() ?? 0)
    case .object(let members): return 1 + (members.map { depth($0.1) }.max() ?? 0)
    default: return 0
    }
}

func write(_ s: String, into out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    let hex = Array("0123456789abcdef".utf8)
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"):
            out += [UInt8(ascii: "\\"), b]
        case 0..<0x20:
            out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xf)]]
        default:
            out.append(b)
        }
    }
    out.append(UInt8(ascii: "\""))
}

func write(_ v: JSONValue, into out: inout [UInt8]) {
    switch v {
    case .null: out += Array("null".utf8)
    case .bool(let b): out += Array((b ? "true" : "false").utf8)
    case .number(let text): out += Array(text.utf8)
    case .string(let s): write(s, into: &out)
    case .array(let items):
        out.append(UInt8(ascii: "["))
        for (i, item) in items.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            write(item, into: &out)
        }
        out.append(UInt8(ascii: "]"))
    case .object(let members):
        out.append(UInt8(ascii: "{"))
        for (i, (key, value)) in members.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            write(key, into: &out)
            out.append(UInt8(ascii: ":"))
            write(value, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

func check(_ v: JSONValue) {
    switch v {
    case .number(let text):
        let integer = !text.utf8.contains { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
        precondition(v.int64 == (integer ? Int64(text) : nil), "int64")
    case .array(let items):
        items.forEach(check)
    case .object(let members):
        for (key, value) in members {
            check(value)
            precondition(v[key] == members.last(where: { $0.0 == key })?.1, "lookup")
        }
    default:
        precondition(v.int64 == nil, "int64 of a non-number")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count >= 1 else { return 0 }
    let maxDepth = Int(data[0]) % 80
    let document = Array(UnsafeBufferPointer(start: data + 1, count: count - 1))
    let value: JSONValue
    do { value = try JSONValue.parse(document, maxDepth: maxDepth) } catch {
        if case .tooLarge = error { preconditionFailure("tooLarge under 16 MiB") }
        return 0
    }
    let d = depth(value)
    precondition(d <= maxDepth, "deeper than maxDepth")
    precondition((try? JSONValue.parse(document, maxDepth: d)) == value, "parse at its own depth")
    if d > 0 {
        do {
            _ = try JSONValue.parse(document, maxDepth: d - 1)
            preconditionFailure("parsed one level too shallow")
        } catch {
            precondition(error == .tooDeep, "not tooDeep one level too shallow")
        }
    }
    check(value)
    var out: [UInt8] = []
    write(value, into: &out)
    guard let again = try? JSONValue.parse(out, maxDepth: d) else { preconditionFailure("written value does not parse") }
    precondition(again == value, "round trip")
    var out2: [UInt8] = []
    write(again, into: &out2)
    precondition(out2 == out, "writing is not stable")
    return 0
}
