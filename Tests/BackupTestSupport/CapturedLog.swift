import Logging
import Synchronization

/// The lines a logger wrote, kept for a test to read: the access log's
/// fields, what a failure was logged as.
public final class CapturedLog: Sendable {
    public struct Line: Sendable {
        public let level: Logger.Level
        public let message: String
        public let metadata: [String: String]
    }

    private let lines = Mutex<[Line]>([])

    public init() {}

    public var all: [Line] { lines.withLock { $0 } }

    /// A logger that keeps what it writes at `level` and above.
    public func logger(level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: "captured") { _ in CapturingHandler(log: self) }
        logger.logLevel = level
        return logger
    }

    fileprivate func keep(_ line: Line) {
        lines.withLock { $0.append(line) }
    }
}

private struct CapturingHandler: LogHandler {
    let log: CapturedLog
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = metadata.merging(event.metadata ?? [:]) { _, new in new }.mapValues { "\($0)" }
        log.keep(CapturedLog.Line(level: event.level, message: event.message.description, metadata: fields))
    }
}
