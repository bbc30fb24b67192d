import Foundation
import Logging

/// swift-log handler writing one JSON object per line to stderr:
/// `{"level", "msg", "ts", ...metadata}`, keys sorted (a job's lines carry
/// `job`). Every job logs on the invoke path, so the line is built by hand
/// in one buffer and written with one write(2): JSONSerialization cost
/// 100–400 µs a line here.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [(String, String)] = [("level", event.level.rawValue), ("msg", "\(event.message)")]
        let merged = event.metadata.map { metadata.merging($0, uniquingKeysWith: { $1 }) } ?? metadata
        for (k, v) in merged where k != "level" && k != "msg" && k != "ts" { fields.append((k, "\(v)")) }
        let line = Self.line(ts: Date().timeIntervalSince1970, fields: fields)
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// `{"k":"v",...,"ts":T}` plus a newline, keys sorted; `ts` a number.
    static func line(ts: Double, fields: [(String, String)]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        var all = fields.map { ($0.0, Optional($0.1)) }
        all.append(("ts", nil))
        all.sort { $0.0 < $1.0 }
        out.append(UInt8(ascii: "{"))
        for (i, (k, v)) in all.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            appendString(&out, k)
            out.append(UInt8(ascii: ":"))
            if let v { appendString(&out, v) } else { out += Array(String(ts).utf8) }
        }
        out += [UInt8(ascii: "}"), 0x0a]
        return out
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// A JSON string (RFC 8259): quote, backslash and control characters escaped.
    static func appendString(_ out: inout [UInt8], _ s: String) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0a: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0d: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20: out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
