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

    public var description: String {
        switch self {
        case let .invalidArgument(message), let .notFound(message), let .alreadyExists(message),
             let .failedPrecondition(message), let .permissionDenied(message), let .unauthenticated(message),
             let .deadlineExceeded(message), let .resourceExhausted(message):
            message
        }
    }
}
