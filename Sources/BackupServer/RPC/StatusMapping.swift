import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import Logging
import NIOHTTP1

/// The one place where errors become what a client hears: RPC statuses,
/// HTTP answers and job failure texts all come from a `ReportableError`'s
/// public side; its detail, and anything unexpected, goes to the log only.
func rpcError(for error: any Error, method: String, logger: Logger) -> RPCError {
    if let error = error as? RPCError { return error }
    if error is CancellationError { return RPCError(.cancelled, "the call was cancelled") }
    let told = publicError(for: error, logger: logger.with(["method": "\(method)"]))
    return RPCError(statusCode(told), told.description)
}

/// What a client is told of `error`; the detail it leaves out is logged.
func publicError(for error: any Error, logger: Logger) -> BackupError {
    switch error {
    case let error as BackupError:
        return error
    case let error as any ReportableError:
        logger.error("\(error.publicError.description)", metadata: ["error": "\(error.logDetail)"])
        return error.publicError
    case let error as PostgresError where error.sqlState == nil:
        logger.error("catalog unavailable", metadata: ["error": "\(error)"])
        return .unavailable("the catalog database is unavailable; try again")
    default:
        logger.error("internal error", metadata: ["error": "\(String(reflecting: error))"])
        return .internalFailure("internal error; the server log has the details")
    }
}

/// The HTTP status of a download answered with `error`.
func httpStatus(_ error: BackupError) -> HTTPResponseStatus {
    switch error {
    case .invalidArgument, .outOfRange: .badRequest
    case .notFound: .notFound
    case .alreadyExists, .aborted: .conflict
    case .failedPrecondition: .preconditionFailed
    case .permissionDenied: .forbidden
    case .unauthenticated: .unauthorized
    case .deadlineExceeded: .gatewayTimeout
    case .resourceExhausted: .tooManyRequests
    case .dataLoss, .internalFailure: .internalServerError
    case .unavailable: .serviceUnavailable
    }
}

func statusCode(_ error: BackupError) -> StatusCode {
    switch error {
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
    case .unavailable: .unavailable
    case .internalFailure: .internal
    }
}
