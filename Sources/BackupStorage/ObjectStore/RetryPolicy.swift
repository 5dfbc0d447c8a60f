/// How often, and after how long a wait, a request to the object store that
/// failed in a passing way is tried again: capped exponential back-off with
/// full jitter (the wait before a try is a random share of
/// `min(cap, base · 2^(try − 2))`), so that processes a busy store slowed
/// down together do not come back together.
public struct RetryPolicy: Sendable, Equatable {
    /// Tries in all, the first included.
    public var attempts = 5
    public var base: Duration = .milliseconds(200)
    public var cap: Duration = .seconds(5)

    public init(attempts: Int = 5, base: Duration = .milliseconds(200), cap: Duration = .seconds(5)) {
        self.attempts = attempts
        self.base = base
        self.cap = cap
    }

    /// The wait before try number `attempt` (2 is the first retry), for a
    /// random `unit` in 0..<1.
    public func delay(beforeTry attempt: Int, unit: Double) -> Duration {
        let doublings = min(max(attempt - 2, 0), 30)
        let ceiling = min(cap, base * (1 << doublings))
        return ceiling * min(max(unit, 0), 1)
    }
}
