import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import Logging

/// The one place where errors become status codes. Domain errors keep their
/// message; anything unexpected becomes INTERNAL with the detail in the log,
/// not on the wire.
func rpcError(for error: any Error, method: String, logger: Logger) -> RPCError {
    switch error {
    case let error as RPCError:
        return error
    case let error as BackupError:
        let code: StatusCode = switch error {
        case .invalidArgument: .invalidArgument
        case .notFound: .notFound
        case .alreadyExists: .alreadyExists
        case .failedPrecondition: .failedPrecondition
        case .permissionDenied: .permissionDenied
        case .unauthenticated: .unauthenticated
        case .deadlineExceeded: .deadlineExceeded
        case .resourceExhausted: .resourceExhausted
        case .outOfRange: .outOfRange
        case .dataLoss: .dataLoss
        case .aborted: .aborted
        }
        return RPCError(code, error.description)
    case is CancellationError:
        return RPCError(.cancelled, "the call was cancelled")
    case let error as PostgresError where error.sqlState == nil:
        logger.error("catalog unavailable", metadata: ["method": "\(method)", "error": "\(error)"])
        return RPCError(.unavailable, "the catalog database is unavailable; try again")
    case let error as BlobStoreError:
        logger.error("blob store failure", metadata: ["method": "\(method)", "error": "\(error)"])
        return RPCError(.internal, "blob store failure: \(error)")
    default:
        logger.error("internal error", metadata: ["method": "\(method)", "error": "\(String(reflecting: error))"])
        return RPCError(.internal, "internal error; the server log has the details")
    }
}
