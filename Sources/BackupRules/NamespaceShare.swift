/// The part of a capacity that every namespace shares (the job slots of a
/// process, the archive cache, the upload spool) one namespace may hold at
/// once, so that one tenant's slow, hung or greedy work never takes all of it.
public struct NamespaceShare: Sendable, Equatable {
    /// Above 0, at most 1.
    public let fraction: Double

    /// Nil for a fraction that is not above 0 and at most 1.
    public init?(_ fraction: Double) {
        guard fraction > 0 && fraction <= 1 else { return nil }
        self.fraction = fraction
    }

    /// Half: what every share is unless configured otherwise.
    public static let half = NamespaceShare(0.5)!

    /// The namespace's part of `capacity` bytes.
    public func of(_ capacity: UInt64) -> UInt64 {
        UInt64(Double(capacity) * fraction)
    }

    /// The namespace's part of `slots`, at least one.
    public func of(slots: Int) -> Int {
        max(1, Int((Double(slots) * fraction).rounded(.down)))
    }
}
