import BackupStorage
import Foundation
import Logging
import Synchronization

/// Log lines as one JSON object each (`--log-format json`), for log
/// shippers: `time` (ISO 8601, UTC, milliseconds), `level`, `label`,
/// `message`, then every metadata field by its name (`request_id`, `peer`,
/// `job`, …) as a string. A field named like one of the first four keeps
/// them and is written with a `_` before its name. Lines are written whole,
/// one write each, so lines of several threads never interleave.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private let write: @Sendable (String) -> Void

    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        event.metadata.map { fields.merge($0) { _, new in new } }
        var line = "{\"time\":\(jsonString(Self.timestamp(Date()))),\"level\":\(jsonString(event.level.rawValue))"
            + ",\"label\":\(jsonString(label)),\"message\":\(jsonString(event.message.description))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            let name = ["time", "level", "label", "message"].contains(key) ? "_" + key : key
            line += ",\(jsonString(name)):\(jsonString("\(value)"))"
        }
        write(line + "}\n")
    }

    /// Writes a whole line to standard error.
    public static let standardError: @Sendable (String) -> Void = { line in
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            var written = 0
            while written < buffer.count {
                let result = Foundation.write(STDERR_FILENO, buffer.baseAddress! + written, buffer.count - written)
                if result > 0 { written += result } else if result < 0 && errno == EINTR { continue } else { return }
            }
        }
    }

    private static let formatter = Mutex<ISO8601DateFormatter>({
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }())

    private static func timestamp(_ date: Date) -> String {
        formatter.withLock { $0.string(from: date) }
    }
}
