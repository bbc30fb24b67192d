import Foundation
import Logging

/// swift-log handler writing one JSON object per line to stderr:
/// `{"ts", "level", "msg", ...metadata}` (a job's lines carry `job`).
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: Any] = [
            "ts": Date().timeIntervalSince1970, "level": event.level.rawValue, "msg": "\(event.message)",
        ]
        for (k, v) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { object[k] = "\(v)" }
        guard var line = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        line.append(0x0a)
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }
}
