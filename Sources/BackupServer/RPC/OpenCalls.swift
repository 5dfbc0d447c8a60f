import BackupCatalog
import BackupRules
import Synchronization

/// The calls open on this server, by the token that authenticated them, so
/// that revoking a token ends its open calls (a WatchJob stream, say) at
/// once rather than when they happen to finish.
public final class OpenCalls: Sendable {
    public struct Registration: Sendable {
        let tokenID: String
        let number: UInt64
    }

    private struct State {
        var draining = false
        var next: UInt64 = 0
        var byToken: [String: [UInt64: AsyncStream<Void>.Continuation]] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// From now on new calls are refused with UNAVAILABLE: the server is shutting down.
    func beginDraining() {
        state.withLock { $0.draining = true }
    }

    var isDraining: Bool { state.withLock { $0.draining } }

    /// Records an open call; `revoked` hears when its token is revoked.
    func register(tokenID: String, revoked: AsyncStream<Void>.Continuation) -> Registration {
        state.withLock { state in
            state.next += 1
            state.byToken[tokenID, default: [:]][state.next] = revoked
            return Registration(tokenID: tokenID, number: state.next)
        }
    }

    /// The calls open now (authenticated and not yet ended).
    var count: Int { state.withLock { $0.byToken.values.reduce(0) { $0 + $1.count } } }

    func remove(_ registration: Registration) {
        state.withLock { state in
            state.byToken[registration.tokenID]?[registration.number] = nil
            if state.byToken[registration.tokenID]?.isEmpty == true { state.byToken[registration.tokenID] = nil }
        }
    }

    /// Ends every open call of a token.
    public func end(callsOf tokenID: String) {
        let calls = state.withLock { $0.byToken[tokenID].map { Array($0.values) } ?? [] }
        calls.forEach { $0.yield() }
    }

    /// The tokens that have calls open now.
    var tokenIDs: [String] { state.withLock { Array($0.byToken.keys) } }

    /// Ends the calls of tokens revoked through another backupd process
    /// sharing the catalog; checks every `interval` of `clock`.
    func endRevoked(using catalog: Catalog, every interval: Duration, clock: any ServiceClock) async throws {
        while true {
            try await clock.sleep(for: interval)
            let open = tokenIDs
            guard !open.isEmpty, let revoked = try? await catalog.revokedTokens(among: open) else { continue }
            revoked.forEach(end(callsOf:))
        }
    }
}
