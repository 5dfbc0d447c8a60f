/// A failure the caller can act on, by kind. The server maps each kind to
/// its status code in one place; the message names the problem.
public enum BackupError: Error, Equatable, CustomStringConvertible {
    case invalidArgument(String)
    case notFound(String)
    case alreadyExists(String)
    case failedPrecondition(String)
    case permissionDenied(String)
    case unauthenticated(String)
    case deadlineExceeded(String)
    case resourceExhausted(String)
    /// A value outside what is allowed now (an upload chunk's offset).
    case outOfRange(String)
    /// Data did not arrive as it was sent (a checksum that does not match).
    case dataLoss(String)
    /// Another call or process holds what this one needs; try again.
    case aborted(String)
    /// A service this one needs (the catalog database) cannot be reached now; try again.
    case unavailable(String)
    /// The server failed; the message says so without its detail, which the log keeps.
    case internalFailure(String)

    public var description: String {
        switch self {
        case let .invalidArgument(message), let .notFound(message), let .alreadyExists(message),
             let .failedPrecondition(message), let .permissionDenied(message), let .unauthenticated(message),
             let .deadlineExceeded(message), let .resourceExhausted(message), let .outOfRange(message), let .dataLoss(message),
             let .aborted(message), let .unavailable(message), let .internalFailure(message):
            message
        }
    }
}

/// An error that says in one place how it is told: what a client hears (a
/// `BackupError`, whose kind is the RPC status, the HTTP status and the
/// job's failure, and whose message names the problem without server paths,
/// SQL or library text), and what the log keeps beside it.
public protocol ReportableError: Error {
    /// What a client is told: as a call's status, a job's failure or an HTTP answer.
    var publicError: BackupError { get }
    /// What the log keeps: paths, errno, the library's own words.
    var logDetail: String { get }
}

extension BackupError: ReportableError {
    public var publicError: BackupError { self }
    public var logDetail: String { description }
}
