import BackupCatalog
import BackupCore
import BackupWire
import Synchronization

/// Reads each watched job from the catalog once per interval, however many
/// calls watch it, and hands each reading to all of them: 640 watches of one
/// job cost the catalog what one does. A token may hold a bounded number of
/// watches.
final class JobWatches: Sendable {
    private struct Watched {
        var watchers: [UInt64: (token: String, readings: AsyncStream<Job>.Continuation)] = [:]
        var poller: Task<Void, Never>?
    }

    private struct State {
        var next: UInt64 = 0
        var jobs: [String: Watched] = [:]
        var byToken: [String: Int] = [:]
    }

    /// Watches one token may have open at once.
    static let maximumPerToken = 1024

    private let catalog: Catalog
    private let interval: Duration
    private let state = Mutex(State())

    init(catalog: Catalog, interval: Duration = .milliseconds(100)) {
        self.catalog = catalog
        self.interval = interval
    }

    /// The job as read from now on, until it ends or the caller stops listening.
    func readings(of jobID: String, token: String) throws(BackupError) -> AsyncStream<Job> {
        let (readings, continuation) = AsyncStream<Job>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let number: UInt64? = state.withLock { state in
            guard state.byToken[token, default: 0] < Self.maximumPerToken else { return nil }
            state.next += 1
            state.byToken[token, default: 0] += 1
            state.jobs[jobID, default: Watched()].watchers[state.next] = (token, continuation)
            if state.jobs[jobID]?.poller == nil {
                state.jobs[jobID]?.poller = Task { await self.poll(jobID) }
            }
            return state.next
        }
        guard let number else {
            throw .resourceExhausted("a token may watch \(Self.maximumPerToken) jobs at once")
        }
        continuation.onTermination = { _ in self.stopWatching(jobID, number) }
        return readings
    }

    private func poll(_ jobID: String) async {
        while (try? await Task.sleep(for: interval)) != nil {
            let job: Job?
            do {
                job = try await catalog.job(id: jobID)
            } catch BackupError.notFound {
                job = nil  // gone with its environment: the watches end
            } catch {
                continue  // the catalog is unavailable: try again at the next reading
            }
            let ended = job.map(\.status.isTerminal) ?? true
            let watchers = state.withLock { state in
                let watchers = state.jobs[jobID]?.watchers.values.map(\.readings) ?? []
                if ended { state.jobs[jobID]?.poller = nil }
                return watchers
            }
            for watcher in watchers {
                if let job { watcher.yield(job) }
                if ended { watcher.finish() }
            }
            if ended { return }
        }
    }

    private func stopWatching(_ jobID: String, _ number: UInt64) {
        state.withLock { state in
            guard let watcher = state.jobs[jobID]?.watchers.removeValue(forKey: number) else { return }
            state.byToken[watcher.token, default: 1] -= 1
            if state.byToken[watcher.token] == 0 { state.byToken[watcher.token] = nil }
            if state.jobs[jobID]?.watchers.isEmpty == true {
                state.jobs[jobID]?.poller?.cancel()
                state.jobs[jobID] = nil
            }
        }
    }
}
