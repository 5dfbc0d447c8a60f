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
    private let timeout: Duration
    private let records = Mutex<[Check: ProbeRecord]>([.catalog: ProbeRecord(), .blobStore: ProbeRecord()])

    init(catalog: Catalog, blobStore: any BlobStore, threadPool: NIOThreadPool, openCalls: OpenCalls, clock: any ServiceClock,
         interval: Duration, timeout: Duration = .seconds(10)) {
        self.catalog = catalog
        self.blobStore = blobStore
        self.threadPool = threadPool
        self.openCalls = openCalls
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
    }

    /// Each check with its problem now (nil: it passes).
    func problems() -> [(check: Check, problem: String?)] {
        let now = clock.now
        let records = self.records.withLock { $0 }
        return Check.allCases.map { check in
            switch check {
            case .serving: (check, openCalls.isDraining ? "shutting down: new calls are refused" : nil)
            default: (check, records[check]?.problem(at: now, timeout: timeout))
            }
        }
    }

    /// Probes until shutdown; the first round at once.
    func run() async {
        await cancelWhenGracefulShutdown {
            repeat {
                async let catalog: Void = self.probe(.catalog) { try await self.catalog.pool.withConnection { _ = try $0.query("SELECT 1") } }
                async let store: Void = self.probe(.blobStore) { try await self.threadPool.runIfActive { try self.writeAndRemove() } }
                _ = await (catalog, store)
            } while (try? await self.clock.sleep(for: self.interval)) != nil
        }
    }

    private func probe(_ check: Check, _ work: () async throws -> Void) async {
        records.withLock { $0[check]?.started(at: clock.now) }
        var problem: String?
        do {
            try await work()
        } catch {
            // For the operator: the store's own words (a path, an HTTP status), never a secret.
            problem = (error as? any ReportableError)?.logDetail ?? "\(error)"
        }
        records.withLock { $0[check]?.finished(problem: problem) }
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
