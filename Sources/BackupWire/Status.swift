import BackupProto

/// gRPC's canonical status codes, with their numbers.
public enum StatusCode: Int32, WireEnum, CustomStringConvertible {
    case ok = 0, cancelled, unknown, invalidArgument, deadlineExceeded, notFound, alreadyExists,
         permissionDenied, resourceExhausted, failedPrecondition, aborted, outOfRange,
         unimplemented, `internal`, unavailable, dataLoss, unauthenticated

    public var description: String {
        ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"][Int(rawValue)]
    }
}

/// The one error type that crosses the wire: a status code and a message
/// that names the problem. Every failure a handler can meet becomes one of
/// these before it is sent.
public struct RPCError: Error, Equatable, CustomStringConvertible {
    public var code: StatusCode
    public var message: String
    /// The server's id of the call that ended so (empty for errors the
    /// client made itself): what an operator finds the call by in the
    /// server's access log.
    public var requestID = ""

    public init(_ code: StatusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }

    /// The same error whichever call it ended: the request id is not compared.
    public static func == (lhs: RPCError, rhs: RPCError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message
    }
}

/// The end of a call, as sent in its last frame.
public struct CallStatus: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__status__descriptor }
    public var code: StatusCode = .ok
    public var message = ""
    /// The server's id of the call (its access log's `request_id`); empty on a connection's own status.
    public var requestID = ""
    public init() {}
    public init(_ error: RPCError) { code = error.code; message = error.message }
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &code)
        f.field(2, &message)
        f.field(3, &requestID)
    }

    /// The error a status other than OK stands for, with its request id.
    public var error: RPCError? {
        guard code != .ok else { return nil }
        var error = RPCError(code, message)
        error.requestID = requestID
        return error
    }
}
