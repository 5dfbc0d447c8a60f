/// The life of one running job as a pure state machine: events in, actions
/// out, with no I/O and no clock read, so that lease loss, cancellation and
/// shutdown, and how each turns into the job's recorded outcome, are rows of
/// a table test. `JobRunner.execute` feeds it (renewal timer, catalog
/// answers, job notifications, the shutdown grace timer, the work's return)
/// and carries out what it returns.
///
///     running ──────────────── work returned ─────────────────▶ ended(outcome)
///        │ cancel requested, lease lost, shutdown grace over        ▲
///        ▼                                                          │
///     stopping(reason): the work is cancelled ── work returned ─────┘
///
/// The lease is renewed every third of its length until the work has
/// returned, however long stopping takes, so no other runner takes the job
/// over while it still runs. A renewal the catalog cannot answer is not a
/// lost lease: the job stops only once the lease it holds has run out. Each
/// renewal also reads whether a cancel was asked for, the safety net for a
/// change notification lost with its connection.
struct JobExecution: Sendable {
    typealias Instant = ContinuousClock.Instant

    enum StopReason: Equatable, Sendable {
        case cancelled, leaseLost, shutdown
    }

    enum Phase: Equatable, Sendable {
        case running
        case stopping(StopReason)
        case ended
    }

    /// How the job's own work came back.
    enum WorkResult: Equatable, Sendable {
        case succeeded
        /// A restore whose outcome cannot be seen yet, left for recovery.
        case deferred(String)
        case failed(String)
    }

    /// What is recorded in the catalog.
    enum Outcome: Equatable, Sendable {
        case finished
        case deferred(String)
        case cancelled
        case failed(String)

        /// The outcome's name, as the metrics label it.
        var name: String {
            switch self {
            case .finished: "finished"
            case .deferred: "deferred"
            case .cancelled: "cancelled"
            case .failed: "failed"
            }
        }
    }

    enum Action: Equatable, Sendable {
        case renewLease
        /// A change of the job was heard: read whether a cancel was asked for.
        case checkCancellation
        /// Cancel the work's task: tools killed, queries cancelled, staging dropped.
        case stopWork
        case record(Outcome)
    }

    static let cancelledText = "cancelled on request; what it had made was removed and its target left as it was"
    static let leaseLostText = "this process lost the job's lease"
    static let shutdownText = "interrupted: backupd shut down while the job ran"

    let leaseDuration: Duration
    private(set) var phase = Phase.running
    /// When the lease last renewed runs out.
    private var leaseExpires: Instant

    init(leaseDuration: Duration, claimedAt now: Instant) {
        self.leaseDuration = leaseDuration
        leaseExpires = now + leaseDuration
    }

    /// How often the lease is renewed.
    var renewalInterval: Duration { max(.seconds(1), leaseDuration / 3) }

    mutating func renewalDue() -> [Action] {
        phase == .ended ? [] : [.renewLease]
    }

    /// The catalog answered a renewal: whether this process still holds the lease, and whether a cancel was asked for.
    mutating func leaseRenewed(held: Bool, cancelRequested: Bool, now: Instant) -> [Action] {
        guard held else { return stop(.leaseLost) }
        leaseExpires = now + leaseDuration
        return cancelRequested ? stop(.cancelled) : []
    }

    /// The catalog could not be asked; the lease may still be held until it runs out.
    mutating func renewalFailed(now: Instant) -> [Action] {
        now >= leaseExpires ? stop(.leaseLost) : []
    }

    mutating func changeHeard() -> [Action] {
        phase == .running ? [.checkCancellation] : []
    }

    mutating func cancellationChecked(requested: Bool) -> [Action] {
        requested ? stop(.cancelled) : []
    }

    /// Shutdown began and the grace period of running jobs is over.
    mutating func shutdownGraceOver() -> [Action] {
        stop(.shutdown)
    }

    mutating func workReturned(_ result: WorkResult) -> [Action] {
        let outcome: Outcome
        switch (phase, result) {
        case (.ended, _): return []
        case (_, .succeeded): outcome = .finished  // it got there before the stop reached it
        case (.running, .deferred(let reason)): outcome = .deferred(reason)
        case (.running, .failed(let reason)): outcome = .failed(reason)
        case (.stopping(.cancelled), _): outcome = .cancelled
        case (.stopping(.leaseLost), _): outcome = .failed(Self.leaseLostText)
        case (.stopping(.shutdown), _): outcome = .failed(Self.shutdownText)
        }
        phase = .ended
        return [.record(outcome)]
    }

    private mutating func stop(_ reason: StopReason) -> [Action] {
        guard phase == .running else { return [] }  // the first reason stands
        phase = .stopping(reason)
        return [.stopWork]
    }
}
