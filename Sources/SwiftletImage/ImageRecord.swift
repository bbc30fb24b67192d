/// A cache entry's `image` file: the configuration a run needs without
/// reading the image again. One field per line, `name value`, lists as
/// repeated lines; `%` and line breaks in values are percent-escaped.
struct ImageRecord: Equatable {
    var digest: String
    var config: ImageConfig
    var warmUp: [String]

    static let magic = "swiftlet-image 1"

    func encoded() -> [UInt8] {
        var lines = [Self.magic, "digest " + escape(digest), "os " + escape(config.os), "architecture " + escape(config.architecture),
                     "workdir " + escape(config.workingDirectory), "user " + escape(config.user)]
        lines += config.environment.map { "env " + escape($0) }
        lines += config.entrypoint.map { "entrypoint " + escape($0) }
        lines += config.command.map { "cmd " + escape($0) }
        lines += warmUp.map { "warm " + escape($0) }
        return Array((lines.joined(separator: "\n") + "\n").utf8)
    }

    static func decode(_ bytes: [UInt8]) throws(ImageError) -> ImageRecord {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true)[...]
        guard lines.first == Substring(magic) else { throw .invalid(what: "cache entry", reason: "not a \(magic) record") }
        lines = lines.dropFirst()
        var r = ImageRecord(digest: "", config: ImageConfig(), warmUp: [])
        for line in lines {
            let name = line.prefix { $0 != " " }
            let value = unescape(line.dropFirst(name.count + 1))
            switch name {
            case "digest": r.digest = value
            case "os": r.config.os = value
            case "architecture": r.config.architecture = value
            case "workdir": r.config.workingDirectory = value
            case "user": r.config.user = value
            case "env": r.config.environment.append(value)
            case "entrypoint": r.config.entrypoint.append(value)
            case "cmd": r.config.command.append(value)
            case "warm": r.warmUp.append(value)
            default: throw .invalid(what: "cache entry", reason: "unknown field '\(name)'")
            }
        }
        return r
    }

    private func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "%": out += "%25"
            case "\n": out += "%0A"
            case "\r": out += "%0D"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    private static func unescape(_ s: Substring) -> String {
        String(s).replacingOccurrences(of: "%0A", with: "\n").replacingOccurrences(of: "%0D", with: "\r").replacingOccurrences(of: "%25", with: "%")
    }
}
