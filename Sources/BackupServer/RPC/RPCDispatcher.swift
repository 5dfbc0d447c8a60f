import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire
import Logging
import NIOConcurrencyHelpers

/// Runs one call from its start frame to its status, independent of any
/// transport: routing (UNIMPLEMENTED), authentication (UNAUTHENTICATED), the
/// handler, its deadline (DEADLINE_EXCEEDED) and cancellation (CANCELLED).
public struct RPCDispatcher: Sendable {
    let router: RPCRouter
    let authenticate: @Sendable (String) async throws -> Caller?
    let openCalls: OpenCalls
    let logger: Logger
    let accessLog: AccessLog
    let metrics: ServiceMetrics

    public init(router: RPCRouter, openCalls: OpenCalls = OpenCalls(), metrics: ServiceMetrics = ServiceMetrics(), logger: Logger,
                authenticate: @escaping @Sendable (String) async throws -> Caller?) {
        self.router = router
        self.authenticate = authenticate
        self.openCalls = openCalls
        self.metrics = metrics
        self.logger = logger
        self.accessLog = AccessLog(logger: logger)
    }

    /// - Parameters:
    ///   - requests: the call's request messages; finishes at half-close.
    ///   - cancelled: yields why, when the call is cancelled (the client asked, or its connection is closing).
    ///   - origin: where the call came from, for its access-log line.
    ///   - authenticated: hears when the call's token is accepted.
    ///   - send: writes one response message.
    /// - Returns: the status that ends the call, with the call's request id; its access-log line is written.
    public func handle(
        _ start: CallStart,
        requests: CallRequests,
        cancelled: AsyncStream<String>,
        origin: CallOrigin = .inProcess,
        authenticated: @escaping @Sendable () -> Void = {},
        send: @escaping @Sendable ([UInt8]) async throws -> Void
    ) async -> CallStatus {
        let began = router.clock.now
        let audit = CallAudit(origin: origin)
        let sent = NIOLockedValueBox(0)
        var status = await run(start, requests: requests, cancelled: cancelled, audit: audit, authenticated: authenticated) { bytes in
            try await send(bytes)
            sent.withLockedValue { $0 += bytes.count }
        }
        status.requestID = audit.requestID
        let (duration, bytesOut) = (began.duration(to: router.clock.now), sent.withLockedValue { $0 })
        accessLog.call(audit, method: start.method, status: "\(status.code)", duration: duration,
                       bytesIn: requests.bytesReceived, bytesOut: bytesOut)
        // A method no route serves is "unknown": a client's made-up names never become series.
        metrics.callEnded(method: router.routes[start.method] == nil ? "unknown" : start.method, code: status.code, duration: duration,
                          bytesIn: requests.bytesReceived, bytesOut: bytesOut)
        return status
    }

    private func run(
        _ start: CallStart, requests: CallRequests, cancelled: AsyncStream<String>, audit: CallAudit,
        authenticated: @escaping @Sendable () -> Void, send: @escaping @Sendable ([UInt8]) async throws -> Void
    ) async -> CallStatus {
        if openCalls.isDraining {
            return CallStatus(RPCError(.unavailable, "backupd is shutting down; call again once it is back"))
        }
        if let problem = start.problem {
            return CallStatus(RPCError(.invalidArgument, "the call's start frame: \(problem)"))
        }
        guard let route = router.routes[start.method] else {
            return CallStatus(RPCError(.unimplemented, "method \(start.method.isEmpty ? "(none)" : start.method) is not implemented"))
        }
        let timeoutMS = start.timeoutMS
        // With a deadline, the call's catalog changes commit only while it has not passed.
        let gate = timeoutMS > 0 ? CommitGate() : nil
        let (revoked, revokedContinuation) = AsyncStream<Void>.makeStream()
        return await withTaskGroup(of: CallStatus?.self) { group in
            group.addTask {
                do {
                    let caller = try await self.caller(for: start)
                    audit.authenticated(caller)
                    authenticated()
                    let registration = self.openCalls.register(tokenID: caller.tokenID, revoked: revokedContinuation)
                    defer { self.openCalls.remove(registration) }
                    // The catalog's changes commit under the call's deadline, and jobs it queues keep its request id.
                    try await CommitGate.$current.withValue(gate) {
                        try await CallScope.$requestID.withValue(audit.requestID) {
                            try await route.run(requests, send, CallContext(caller: caller, method: start.method, audit: audit))
                        }
                    }
                    return CallStatus()
                } catch {
                    return CallStatus(rpcError(for: error, method: start.method, logger: self.logger.with(["request_id": "\(audit.requestID)"])))
                }
            }
            group.addTask {
                for await _ in revoked { return CallStatus(RPCError(.unauthenticated, "the call's token was revoked")) }
                return nil
            }
            if let gate {
                group.addTask {
                    // The deadline runs on the router's clock, the one every timer of the server takes.
                    guard (try? await self.router.clock.sleep(for: .milliseconds(timeoutMS))) != nil else { return nil }
                    // A change already committing answers with its own result.
                    guard gate.expire() else { return nil }
                    return CallStatus(RPCError(.deadlineExceeded, "the call's deadline of \(timeoutMS) ms passed; "
                                               + (route.keptWhenCutShort ?? "nothing was changed")))
                }
            }
            group.addTask {
                for await reason in cancelled { return CallStatus(RPCError(.cancelled, reason)) }
                return nil
            }
            var outcome = CallStatus(RPCError(.internal, "the call ended without a status"))
            while let next = await group.next() {
                if let status = next {
                    outcome = status
                    break
                }
            }
            group.cancelAll()
            return outcome
        }
    }

    private func caller(for start: CallStart) async throws -> Caller {
        guard start.metadata.filter({ $0.key.lowercased() == "authorization" }).count <= 1 else {
            throw BackupError.unauthenticated("the call has more than one authorization entry")
        }
        guard let header = start.metadata("authorization") else {
            throw BackupError.unauthenticated("the call has no authorization metadata (\"Bearer <token>\")")
        }
        guard header.hasPrefix("Bearer "), case let secret = String(header.dropFirst(7)), !secret.isEmpty else {
            throw BackupError.unauthenticated("authorization metadata must be \"Bearer <token>\"")
        }
        guard let caller = try await authenticate(secret) else {
            throw BackupError.unauthenticated("the token is unknown or revoked")
        }
        return caller
    }
}
