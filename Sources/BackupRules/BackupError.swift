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

    public var description: String {
        switch self {
        case let .invalidArgument(message), let .notFound(message), let .alreadyExists(message),
             let .failedPrecondition(message), let .permissionDenied(message), let .unauthenticated(message),
             let .deadlineExceeded(message), let .resourceExhausted(message), let .outOfRange(message), let .dataLoss(message),
             let .aborted(message):
            message
        }
    }
}
