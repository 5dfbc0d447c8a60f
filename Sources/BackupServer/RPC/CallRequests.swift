import Synchronization

/// A call's request messages as they arrive. Each message the handler takes,
/// and each one still waiting when the call ends, is handed back to the
/// connection's receive budget (`onTaken`), so the connection reads on only
/// as fast as its calls take what it received.
public struct CallRequests: AsyncSequence, Sendable {
    public typealias Element = [UInt8]

    fileprivate struct Received: Sendable {
        let bytes: [UInt8]
        let charge: Int
    }

    private let stream: AsyncThrowingStream<Received, any Error>
    private let ledger: Ledger

    /// The connection's end of a call's requests.
    public struct Continuation: Sendable {
        fileprivate let continuation: AsyncThrowingStream<Received, any Error>.Continuation
        fileprivate let ledger: Ledger

        /// Delivers a message that was charged `charge` bytes on arrival.
        public func yield(_ bytes: [UInt8], charge: Int = 0) {
            if ledger.add(charge) { continuation.yield(Received(bytes: bytes, charge: charge)) }
        }

        /// The client half-closed the call: no more messages.
        public func finish() {
            continuation.finish()
        }

        public func finish(throwing error: any Error) {
            continuation.finish(throwing: error)
        }

        /// The call has ended: what it left untaken goes back, and later messages are handed back at once.
        public func end() {
            continuation.finish()
            ledger.end()
        }
    }

    public static func makeStream(onTaken: @escaping @Sendable (Int) -> Void = { _ in }) -> (CallRequests, Continuation) {
        let (stream, continuation) = AsyncThrowingStream<Received, any Error>.makeStream()
        let ledger = Ledger(onTaken: onTaken)
        return (CallRequests(stream: stream, ledger: ledger), Continuation(continuation: continuation, ledger: ledger))
    }

    /// The bytes of the messages the client sent on the call so far, as charged on arrival.
    public var bytesReceived: Int { ledger.received }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(received: stream.makeAsyncIterator(), ledger: ledger)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        fileprivate var received: AsyncThrowingStream<Received, any Error>.AsyncIterator
        fileprivate let ledger: Ledger

        public mutating func next() async throws -> [UInt8]? {
            guard let message = try await received.next() else { return nil }
            ledger.take(message.charge)
            return message.bytes
        }
    }
}

/// The bytes of a call's messages received and not yet taken.
private final class Ledger: Sendable {
    private struct State {
        var outstanding = 0
        var ended = false
        var received = 0
    }

    private let state = Mutex(State())
    private let onTaken: @Sendable (Int) -> Void

    init(onTaken: @escaping @Sendable (Int) -> Void) {
        self.onTaken = onTaken
    }

    /// Counts a message in; false (and handed back at once) once the call has ended.
    func add(_ charge: Int) -> Bool {
        let open = state.withLock { state in
            state.received += charge
            if !state.ended { state.outstanding += charge }
            return !state.ended
        }
        if !open { onTaken(charge) }
        return open
    }

    var received: Int { state.withLock { $0.received } }

    func take(_ charge: Int) {
        let counted = state.withLock { state in
            if !state.ended { state.outstanding -= charge }
            return !state.ended
        }
        if counted { onTaken(charge) }
    }

    func end() {
        let untaken = state.withLock { state in
            defer { state = State(outstanding: 0, ended: true, received: state.received) }
            return state.ended ? 0 : state.outstanding
        }
        if untaken > 0 { onTaken(untaken) }
    }
}
