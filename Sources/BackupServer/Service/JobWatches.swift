import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire
import Synchronization

/// Reads each watched job from the catalog when it changes, however many
/// calls watch it, and hands each reading to all of them: 640 watches of one
/// job cost the catalog what one does. Changes are heard through the
/// catalog's job notifications (`JobChangeListener`, one listening
/// connection per process); a slow periodic reading is the safety net for a
/// notification lost with its connection. A token may hold a bounded number
/// of watches.
final class JobWatches: Sendable {
    private struct Watched {
        var watchers: [UInt64: (token: String, readings: AsyncStream<Job>.Continuation)] = [:]
        /// Wakes the job's reader: a change was heard, or the safety net's time came.
        var wake: AsyncStream<Void>.Continuation?
        var reader: Task<Void, Never>?
    }

    private struct State {
        var next: UInt64 = 0
        var jobs: [String: Watched] = [:]
        var byToken: [String: Int] = [:]
    }

    /// Watches one token may have open at once.
    static let maximumPerToken = 1024

    private let catalog: Catalog
    private let safetyInterval: Duration
    private let clock: any ServiceClock
    private let state = Mutex(State())

    init(catalog: Catalog, safetyInterval: Duration = .seconds(1), clock: any ServiceClock) {
        self.clock = clock
        self.catalog = catalog
        self.safetyInterval = safetyInterval
    }

    /// A job changed: its reader (if it is watched) reads it now.
    func changed(_ jobID: String) {
        _ = state.withLock { $0.jobs[jobID]?.wake }?.yield()
    }

    /// The job as read from now on, until it ends or the caller stops listening.
    func readings(of jobID: String, token: String) throws(BackupError) -> AsyncStream<Job> {
        let (readings, continuation) = AsyncStream<Job>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let number: UInt64? = state.withLock { state in
            guard state.byToken[token, default: 0] < Self.maximumPerToken else { return nil }
            state.next += 1
            state.byToken[token, default: 0] += 1
            state.jobs[jobID, default: Watched()].watchers[state.next] = (token, continuation)
            if state.jobs[jobID]?.reader == nil {
                let (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
                wake.yield()  // the first reading at once
                state.jobs[jobID]?.wake = wake
                state.jobs[jobID]?.reader = Task { await self.read(jobID, whenWoken: wakes, wake: wake) }
            }
            return state.next
        }
        guard let number else {
            throw .resourceExhausted("a token may watch \(Self.maximumPerToken) jobs at once")
        }
        continuation.onTermination = { _ in self.stopWatching(jobID, number) }
        return readings
    }

    private func read(_ jobID: String, whenWoken wakes: AsyncStream<Void>, wake: AsyncStream<Void>.Continuation) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while (try? await self.clock.sleep(for: self.safetyInterval)) != nil { wake.yield() }
            }
            defer { group.cancelAll() }
            for await _ in wakes {
                let job: Job?
                do {
                    job = try await catalog.job(id: jobID)
                } catch BackupError.notFound {
                    job = nil  // gone with its environment: the watches end
                } catch {
                    continue  // the catalog is unavailable: try again when woken next
                }
                let ended = job.map(\.status.isTerminal) ?? true
                let watchers = state.withLock { state in
                    let watchers = state.jobs[jobID]?.watchers.values.map(\.readings) ?? []
                    if ended {
                        state.jobs[jobID]?.reader = nil
                        state.jobs[jobID]?.wake = nil
                    }
                    return watchers
                }
                for watcher in watchers {
                    if let job { watcher.yield(job) }
                    if ended { watcher.finish() }
                }
                if ended { return }
            }
        }
    }

    private func stopWatching(_ jobID: String, _ number: UInt64) {
        state.withLock { state in
            guard let watcher = state.jobs[jobID]?.watchers.removeValue(forKey: number) else { return }
            state.byToken[watcher.token, default: 1] -= 1
            if state.byToken[watcher.token] == 0 { state.byToken[watcher.token] = nil }
            if state.jobs[jobID]?.watchers.isEmpty == true {
                state.jobs[jobID]?.reader?.cancel()
                state.jobs[jobID]?.wake?.finish()
                state.jobs[jobID] = nil
            }
        }
    }
}
