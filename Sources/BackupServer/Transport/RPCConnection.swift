import BackupWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// Serves the RPC protocol on one connection: demultiplexes frames into
/// calls by call_id, runs each call as a child task, and writes its
/// responses and final status. Frames of different calls interleave. What
/// a connection may do (open calls, time, memory) is its
/// `ConnectionController`'s to decide.
///
/// Ends the connection on an oversized or undecodable frame, a call using
/// call_id 0 or an id already open: every open call first ends with its own
/// single status (CANCELLED), then the connection-level status goes out on
/// call_id 0 as the connection's last frame. On graceful shutdown it refuses
/// new calls with UNAVAILABLE and closes once the open ones have ended.
struct RPCConnection {
    let dispatcher: RPCDispatcher
    let logger: Logger

    /// The client's half of an open call.
    private struct OpenCall {
        let requests: CallRequests.Continuation
        let cancel: AsyncStream<Void>.Continuation
    }

    private typealias Calls = NIOLockedValueBox<[UInt32: OpenCall]>

    func run(_ channel: NIOAsyncChannel<ReceivedFrame, Frame>, controller: ConnectionController) async {
        let calls = Calls([:])
        do {
            try await channel.executeThenClose { inbound, outbound in
                let violation: RPCError? = await withGracefulShutdownHandler {
                    await withDiscardingTaskGroup(returning: RPCError?.self) { group in
                        var violation: RPCError?
                        do {
                            for try await received in inbound {
                                try await accept(received, calls: calls, controller: controller, group: &group, outbound: outbound)
                            }
                        } catch let error as FrameError {
                            violation = error.rpcError
                        } catch let error as RPCError {
                            violation = error
                        } catch {
                            logger.debug("connection ended", metadata: ["error": "\(error)"])
                        }
                        // The client is gone or broke the protocol: end its calls, each with its one status.
                        for call in calls.withLockedValue({ Array($0.values) }) {
                            call.requests.finish(throwing: CancellationError())
                            call.cancel.yield()
                        }
                        return violation
                    }
                } onGracefulShutdown: {
                    controller.gracefulShutdown()
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
        _ received: ReceivedFrame, calls: Calls, controller: ConnectionController, group: inout DiscardingTaskGroup,
        outbound: NIOAsyncChannelOutboundWriter<Frame>
    ) async throws {
        let id = received.frame.callID
        switch received.frame.kind {
        case .start(let start):
            controller.consumed(received.charge)
            switch await controller.callStarted(id) {
            case .violation(let error):
                throw error
            case .refuse(let refusal):
                group.addTask { try? await outbound.write(Frame(callID: id, .status(CallStatus(refusal)))) }
            case .accept:
                let (requests, requestContinuation) = CallRequests.makeStream(onTaken: controller.consumed)
                let (cancelled, cancelContinuation) = AsyncStream<Void>.makeStream()
                calls.withLockedValue { $0[id] = OpenCall(requests: requestContinuation, cancel: cancelContinuation) }
                group.addTask {
                    let status = await dispatcher.handle(start, requests: requests, cancelled: cancelled) { bytes in
                        try await outbound.write(Frame(callID: id, .message(bytes)))
                    }
                    calls.withLockedValue { $0.removeValue(forKey: id) }?.requests.end()
                    controller.callEnded(id)
                    try? await outbound.write(Frame(callID: id, .status(status)))
                    controller.statusWritten()
                }
            }
        case .message(let bytes):
            if let call = calls.withLockedValue({ $0[id] }) {
                call.requests.yield(bytes, charge: received.charge)
            } else {
                controller.consumed(received.charge)
            }
        case .halfClose:
            controller.consumed(received.charge)
            calls.withLockedValue { $0[id] }?.requests.finish()
        case .cancel:
            controller.consumed(received.charge)
            calls.withLockedValue { $0[id] }?.cancel.yield()
        case .status, nil:
            throw RPCError(.invalidArgument, "a client sends start, message, half_close or cancel frames; call_id \(id) sent another kind")
        }
    }
}

/// A frame as received, with the bytes it was charged when its length
/// arrived (its length field and body), which go back once it is consumed.
struct ReceivedFrame: Sendable {
    let frame: Frame
    let charge: Int
}

/// `FrameDecoder`, reporting what each frame took of the stream.
struct ReceivedFrameDecoder: NIOSingleStepByteToMessageDecoder {
    var frames: FrameDecoder

    mutating func decode(buffer: inout ByteBuffer) throws -> ReceivedFrame? {
        let before = buffer.readableBytes
        return try frames.decode(buffer: &buffer).map { ReceivedFrame(frame: $0, charge: before - buffer.readableBytes) }
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ReceivedFrame? {
        try decode(buffer: &buffer)
    }
}
