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

    public init(_ code: StatusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// The end of a call, as sent in its last frame.
public struct CallStatus: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__status__descriptor }
    public var code: StatusCode = .ok
    public var message = ""
    public init() {}
    public init(_ error: RPCError) { code = error.code; message = error.message }
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &code)
        f.field(2, &message)
    }
}
