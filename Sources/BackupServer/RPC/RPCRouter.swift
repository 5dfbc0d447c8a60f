import BackupRules
import BackupStorage
import BackupWire

/// Sends the response messages of a server-streaming call.
public struct ResponseWriter<Response: WireMessage>: Sendable {
    let send: @Sendable ([UInt8]) async throws -> Void

    public func write(_ response: Response) async throws {
        try await send(response.serializedBytes())
    }
}

/// The request messages of a client-streaming call, decoded as they arrive.
public struct RequestMessages<Request: WireMessage>: AsyncSequence, Sendable {
    public typealias Element = Request
    let raw: CallRequests

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(raw: raw.makeAsyncIterator()) }

    public struct AsyncIterator: AsyncIteratorProtocol {
        var raw: CallRequests.AsyncIterator
        public mutating func next() async throws -> Request? {
            guard let bytes = try await raw.next() else { return nil }
            return try decodeRequest(bytes)
        }
    }
}

/// Maps method names to handlers, typed by the `Method` table of BackupWire,
/// so a handler cannot be registered with the wrong message types.
public struct RPCRouter: Sendable {
    struct Route: Sendable {
        /// What a client-streaming call keeps of what it sent when it ends early (a deadline); nil for the others, which keep nothing.
        var keptWhenCutShort: String?
        let run: @Sendable (CallRequests, @escaping @Sendable ([UInt8]) async throws -> Void, CallContext) async throws -> Void
    }

    private(set) var routes: [String: Route] = [:]
    /// How long a unary or server-streaming call's one request and its
    /// half-close may take to arrive after its start: a client cannot keep
    /// such a call (and its slot) open by never finishing it.
    let requestTimeout: Duration
    let clock: any ServiceClock

    public init(requestTimeout: Duration = ConnectionLimits().partialFrameTimeout, clock: any ServiceClock = ContinuousClock()) {
        self.requestTimeout = requestTimeout
        self.clock = clock
    }

    public mutating func unary<Request, Response>(
        _ method: Method<Request, Response>,
        _ handler: @escaping @Sendable (Request, CallContext) async throws -> Response
    ) {
        precondition(method.shape == .unary, "\(method.name) is not unary")
        let (requestTimeout, clock) = (self.requestTimeout, self.clock)
        routes[method.name] = Route { requests, send, context in
            let request: Request = try await singleRequest(requests, within: requestTimeout, on: clock)
            try await send(try await handler(request, context).serializedBytes())
        }
    }

    public mutating func serverStreaming<Request, Response>(
        _ method: Method<Request, Response>,
        _ handler: @escaping @Sendable (Request, CallContext, ResponseWriter<Response>) async throws -> Void
    ) {
        precondition(method.shape == .serverStreaming, "\(method.name) is not server streaming")
        let (requestTimeout, clock) = (self.requestTimeout, self.clock)
        routes[method.name] = Route { requests, send, context in
            let request: Request = try await singleRequest(requests, within: requestTimeout, on: clock)
            try await handler(request, context, ResponseWriter(send: send))
        }
    }

    public mutating func clientStreaming<Request, Response>(
        _ method: Method<Request, Response>, keptWhenCutShort: String,
        _ handler: @escaping @Sendable (RequestMessages<Request>, CallContext) async throws -> Response
    ) {
        precondition(method.shape == .clientStreaming, "\(method.name) is not client streaming")
        routes[method.name] = Route(keptWhenCutShort: keptWhenCutShort) { requests, send, context in
            try await send(try await handler(RequestMessages(raw: requests), context).serializedBytes())
        }
    }
}

func decodeRequest<Request: WireMessage>(_ bytes: [UInt8]) throws(BackupError) -> Request {
    do {
        return try Request(validating: bytes)
    } catch let violation as WireViolation {
        throw .invalidArgument(violation.description)
    } catch {
        throw .invalidArgument("request message is not a valid \(String(cString: Request.descriptor.name))")
    }
}

/// Unary and server-streaming calls carry exactly one request message,
/// followed by the half-close, within `timeout`.
private func singleRequest<Request: WireMessage>(_ requests: CallRequests, within timeout: Duration, on clock: any ServiceClock) async throws -> Request {
    let bytes = try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
        group.addTask {
            var iterator = requests.makeAsyncIterator()
            guard let first = try await iterator.next() else {
                throw BackupError.invalidArgument("the call ended without a request message")
            }
            guard try await iterator.next() == nil else {
                throw BackupError.invalidArgument("this method takes one request message; the call sent more")
            }
            return first
        }
        group.addTask {
            try await clock.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
    guard let bytes else {
        throw BackupError.deadlineExceeded("the call's request message and half-close did not arrive within \(timeout)")
    }
    return try decodeRequest(bytes)
}
