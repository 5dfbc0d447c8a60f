import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// Keeps a job's progress in the catalog without writing on every byte: a
/// change is written at most twice a second, and at once when the phase changes.
actor ProgressReporter {
    private let catalog: Catalog
    private let jobID: String
    private var done: UInt64 = 0
    private var total: UInt64 = 0
    private var phase = ""
    private let clock: any ServiceClock
    private var lastWrite: ContinuousClock.Instant

    init(catalog: Catalog, jobID: String, clock: any ServiceClock) {
        self.catalog = catalog
        self.jobID = jobID
        self.clock = clock
        lastWrite = clock.now - .seconds(1)
    }

    func update(done: UInt64? = nil, total: UInt64? = nil, phase: String? = nil) async {
        let phaseChanged = phase != nil && phase != self.phase
        if let done { self.done = done }
        if let total { self.total = max(total, self.done) }
        if let phase { self.phase = phase }
        guard phaseChanged || clock.now - lastWrite >= .milliseconds(500) else { return }
        lastWrite = clock.now
        try? await catalog.reportProgress(jobID: jobID, bytesDone: self.done, bytesTotal: self.total, phase: self.phase)
    }

    /// Work that runs in parts at once (a dump beside the files): each part
    /// reports its own bytes, and the job's are their sums.
    private var parts: [String: (done: UInt64, total: UInt64)] = [:]

    /// The bytes a part has reported done.
    func done(of part: String) -> UInt64 { parts[part]?.done ?? 0 }

    func update(part: String, done: UInt64? = nil, total: UInt64? = nil) async {
        var entry = parts[part] ?? (0, 0)
        if let done { entry.done = done }
        if let total { entry.total = total }
        entry.total = max(entry.total, entry.done)
        parts[part] = entry
        await update(done: parts.values.reduce(0) { $0 + $1.done }, total: parts.values.reduce(0) { $0 + $1.total })
    }
}

extension ProgressReporter {
    /// Where `reporting` puts the bytes its work has done.
    enum Target: Sendable {
        case job
        case part(String)
        /// Nowhere: work whose bytes the job's totals do not count.
        case none
    }

    /// Runs blocking `work` on `threadPool`, reporting the bytes it says it
    /// has done (`report`) twice a second to `target`. A cancelled task sets
    /// the `Interruption` the work checks, so it stops within a chunk.
    func reporting<T: Sendable>(on threadPool: NIOThreadPool, to target: Target = .job,
                                _ work: @escaping @Sendable (_ interruption: Interruption, _ report: @escaping @Sendable (UInt64) -> Void) throws -> T)
        async throws -> T {
        let done = NIOLockedValueBox<UInt64>(0)
        let interruption = Interruption()
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await self.clock.sleep(for: .milliseconds(500))
                    let bytes = done.withLockedValue { $0 }
                    switch target {
                    case .job: await self.update(done: bytes)
                    case .part(let part): await self.update(part: part, done: bytes)
                    case .none: break
                    }
                }
            }
            defer { group.cancelAll() }
            return try await withTaskCancellationHandler {
                try await threadPool.runIfActive { try work(interruption) { bytes in done.withLockedValue { $0 = bytes } } }
            } onCancel: {
                interruption.set()
            }
        }
    }
}
