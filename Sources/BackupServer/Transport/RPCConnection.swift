import BackupWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// Serves the RPC protocol on one connection: demultiplexes frames into
/// calls by call_id, runs each call as a child task, and writes its
/// responses and final status. Frames of different calls interleave.
///
/// Ends the connection on an oversized or undecodable frame, a call using
/// call_id 0 or an id already open: every open call first ends with its own
/// single status (CANCELLED), then the connection-level status goes out on
/// call_id 0 as the connection's last frame. On graceful shutdown it refuses
/// new calls with UNAVAILABLE and closes once the open ones have ended.
struct RPCConnection {
    let dispatcher: RPCDispatcher
    /// A connection with no call open this long is closed.
    let idleTimeout: Duration
    let logger: Logger
    /// Calls one connection may have open at once; more get RESOURCE_EXHAUSTED.
    static let maximumOpenCalls = 128

    /// The client's half of an open call.
    private struct OpenCall {
        let requests: AsyncThrowingStream<[UInt8], any Error>.Continuation
        let cancel: AsyncStream<Void>.Continuation
    }

    private struct State {
        var calls: [UInt32: OpenCall] = [:]
        var draining = false
        /// Closes the connection unless a call opens first; armed while no call is open.
        var idleClose: Scheduled<Void>?
    }

    /// Arms the idle timer of a connection that has no call open.
    private func armIdleClose(_ state: inout State, _ channel: any Channel) {
        state.idleClose?.cancel()
        state.idleClose = channel.eventLoop.scheduleTask(in: TimeAmount(idleTimeout)) { channel.close(promise: nil) }
    }

    func run(_ channel: NIOAsyncChannel<Frame, Frame>) async {
        let state = NIOLockedValueBox(State())
        let underlying = channel.channel
        state.withLockedValue { armIdleClose(&$0, underlying) }
        defer { state.withLockedValue { $0.idleClose?.cancel() } }
        do {
            try await channel.executeThenClose { inbound, outbound in
                let violation: RPCError? = await withGracefulShutdownHandler {
                    await withDiscardingTaskGroup(returning: RPCError?.self) { group in
                        var violation: RPCError?
                        do {
                            for try await frame in inbound {
                                try accept(frame, state: state, group: &group, outbound: outbound, channel: underlying)
                            }
                        } catch let error as FrameError {
                            violation = error.rpcError
                        } catch let error as RPCError {
                            violation = error
                        } catch {
                            logger.debug("connection ended", metadata: ["error": "\(error)"])
                        }
                        // The client is gone or broke the protocol: end its calls, each with its one status.
                        for call in state.withLockedValue({ Array($0.calls.values) }) {
                            call.requests.finish(throwing: CancellationError())
                            call.cancel.yield()
                        }
                        return violation
                    }
                } onGracefulShutdown: {
                    let idle = state.withLockedValue { state in
                        state.draining = true
                        return state.calls.isEmpty
                    }
                    if idle { underlying.close(promise: nil) }
                }
                // Every call has its status by now: the connection's own comes last.
                if let violation {
                    logger.info("closing connection", metadata: ["reason": "\(violation)"])
                    try? await outbound.write(Frame(callID: 0, .status(CallStatus(violation))))
                }
            }
        } catch {
            logger.debug("connection closed with error", metadata: ["error": "\(error)"])
        }
    }

    private func accept(
        _ frame: Frame, state: NIOLockedValueBox<State>, group: inout DiscardingTaskGroup,
        outbound: NIOAsyncChannelOutboundWriter<Frame>, channel: any Channel
    ) throws {
        let id = frame.callID
        switch frame.kind {
        case .start(let start):
            guard id != 0 else { throw RPCError(.invalidArgument, "call_id 0 is reserved for the connection's own status") }
            let (requests, requestContinuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
            let (cancelled, cancelContinuation) = AsyncStream<Void>.makeStream()
            let refusal: RPCError? = try state.withLockedValue { state in
                guard state.calls[id] == nil else { throw RPCError(.invalidArgument, "call_id \(id) is already open on this connection") }
                guard !state.draining else { return RPCError(.unavailable, "the server is shutting down") }
                guard state.calls.count < Self.maximumOpenCalls else {
                    return RPCError(.resourceExhausted, "a connection may have \(Self.maximumOpenCalls) calls open at once")
                }
                state.calls[id] = OpenCall(requests: requestContinuation, cancel: cancelContinuation)
                state.idleClose?.cancel()
                state.idleClose = nil
                return nil
            }
            if let refusal {
                group.addTask { try? await outbound.write(Frame(callID: id, .status(CallStatus(refusal)))) }
                return
            }
            group.addTask {
                let status = await dispatcher.handle(start, requests: requests, cancelled: cancelled) { bytes in
                    try await outbound.write(Frame(callID: id, .message(bytes)))
                }
                let closeNow = state.withLockedValue { state in
                    state.calls[id] = nil
                    if state.calls.isEmpty && !state.draining { armIdleClose(&state, channel) }
                    return state.draining && state.calls.isEmpty
                }
                try? await outbound.write(Frame(callID: id, .status(status)))
                if closeNow { channel.close(promise: nil) }
            }
        case .message(let bytes):
            state.withLockedValue { $0.calls[id] }?.requests.yield(bytes)
        case .halfClose:
            state.withLockedValue { $0.calls[id] }?.requests.finish()
        case .cancel:
            state.withLockedValue { $0.calls[id] }?.cancel.yield()
        case .status, nil:
            throw RPCError(.invalidArgument, "a client sends start, message, half_close or cancel frames; call_id \(id) sent another kind")
        }
    }
}
