import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import NIOPosix
import ServiceLifecycle
import Synchronization

/// One dependency's last probe: what went wrong (nil: it answered), and
/// since when a probe has been under way. A probe that goes unanswered
/// past the timeout counts as failed at once, not when it finally returns,
/// so a hung store or catalog shows up in `/readyz` within the timeout.
struct ProbeRecord: Sendable, Equatable {
    private(set) var problem: String? = "not probed yet"
    private(set) var probingSince: ContinuousClock.Instant?

    mutating func started(at now: ContinuousClock.Instant) {
        probingSince = now
    }

    mutating func finished(problem: String?) {
        self.problem = problem
        probingSince = nil
    }

    /// What is wrong at `now`: a probe unanswered past `timeout`, or the last probe's problem.
    func problem(at now: ContinuousClock.Instant, timeout: Duration) -> String? {
        if let probingSince, probingSince.duration(to: now) > timeout {
            return "no answer for \(probingSince.duration(to: now).components.seconds) s"
        }
        return problem
    }
}

/// One dependency probed in the background and read at once: its record
/// behind a lock, and the running of a probe into it. A failure is
/// described in the dependency's own words for the operator (a path, an
/// HTTP status, libpq's message), never with a secret.
final class Probe: Sendable {
    private let record = Mutex(ProbeRecord())
    private let clock: any ServiceClock
    private let timeout: Duration

    init(clock: any ServiceClock, timeout: Duration = .seconds(10)) {
        self.clock = clock
        self.timeout = timeout
    }

    /// Runs `work` as the probe; returns its problem, nil when it answered.
    @discardableResult
    func run(_ work: () async throws -> Void) async -> String? {
        record.withLock { $0.started(at: clock.now) }
        var problem: String?
        do {
            try await work()
        } catch {
            problem = (error as? any ReportableError)?.logDetail ?? "\(error)"
        }
        record.withLock { $0.finished(problem: problem) }
        return problem
    }

    /// What is wrong now: the last probe's problem, or one unanswered past the timeout.
    var problem: String? { record.withLock { $0.problem(at: clock.now, timeout: timeout) } }
}

/// Whether this process should be sent work, as `/readyz` tells load
/// balancers and orchestrators: the catalog answers a query, the blob store
/// takes a write (a small object of random bytes, removed again, that no
/// tenant's content can equal), and the server is not draining. The
/// catalog and the store are probed every `interval` of the server's clock
/// in the background, so `/readyz` never waits on them and a flood of
/// requests for it costs them nothing.
final class ReadinessProbe: Service, Sendable {
    enum Check: String, CaseIterable, Sendable {
        case catalog, blobStore = "blob_store", serving
    }

    private let catalog: Catalog
    private let blobStore: any BlobStore
    private let threadPool: NIOThreadPool
    private let openCalls: OpenCalls
    private let clock: any ServiceClock
    private let interval: Duration
    private let probes: [Check: Probe]

    init(catalog: Catalog, blobStore: any BlobStore, threadPool: NIOThreadPool, openCalls: OpenCalls, clock: any ServiceClock,
         interval: Duration) {
        self.catalog = catalog
        self.blobStore = blobStore
        self.threadPool = threadPool
        self.openCalls = openCalls
        self.clock = clock
        self.interval = interval
        probes = [.catalog: Probe(clock: clock), .blobStore: Probe(clock: clock)]
    }

    /// Each check with its problem now (nil: it passes).
    func problems() -> [(check: Check, problem: String?)] {
        Check.allCases.map { check in
            switch check {
            case .serving: (check, openCalls.isDraining ? "shutting down: new calls are refused" : nil)
            default: (check, probes[check]?.problem)
            }
        }
    }

    /// Probes until shutdown; the first round at once.
    func run() async {
        await cancelWhenGracefulShutdown {
            repeat {
                async let catalog = self.probes[.catalog]!.run { try await self.catalog.pool.withConnection { _ = try $0.query("SELECT 1") } }
                async let store = self.probes[.blobStore]!.run { try await self.threadPool.runIfActive { try self.writeAndRemove() } }
                _ = await (catalog, store)
            } while (try? await self.clock.sleep(for: self.interval)) != nil
        }
    }

    /// Writes an object of random content and removes it again.
    private func writeAndRemove() throws {
        var content = Array("backupd readiness probe ".utf8)
        content += (0..<32).map { _ in UInt8.random(in: .min ... .max) }
        let writer = try blobStore.writer()
        try content.withUnsafeBytes { try writer.write($0) }
        let stored = try writer.finish()
        try blobStore.remove(stored.hash)
    }
}
