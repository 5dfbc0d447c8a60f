import Foundation

/// How long a backup is kept: days or calendar months, counted from its
/// creation in its environment's time zone, so a promise of "3 months"
/// means the same date three months on (22 October → 22 January), clamped
/// to the month's last day (31 August → 30 November), whatever daylight
/// saving did in between.
public enum RetentionPeriod: Sendable, Hashable {
    case days(Int)
    case months(Int)

    /// The moment this period after `start` ends, in `timeZone`.
    public func end(after start: Date, in timeZone: TimeZone) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let added: Date? = switch self {
        case .days(let count): calendar.date(byAdding: .day, value: count, to: start)
        case .months(let count): calendar.date(byAdding: .month, value: count, to: start)
        }
        // A date the calendar cannot reach is kept for good rather than dropped early.
        return added ?? .distantFuture
    }
}

/// The retention of each kind of backup in one environment: the product's
/// promise, as pure code with the clock and time zone given, so it is
/// tested day by day without waiting for days.
public struct RetentionPolicy: Sendable, Hashable {
    public var nightly: RetentionPeriod = .days(14)
    public var weekly: RetentionPeriod = .months(3)
    public var monthly: RetentionPeriod = .months(12)
    public var onDemand: RetentionPeriod = .days(14)
    public var uploaded: RetentionPeriod = .days(14)

    public init() {}

    /// The period of a kind by its catalog name (`nightly`, `weekly`,
    /// `monthly`, `on-demand`, `uploaded`).
    func period(of kind: String) -> RetentionPeriod? {
        switch kind {
        case "nightly": nightly
        case "weekly": weekly
        case "monthly": monthly
        case "on-demand": onDemand
        case "uploaded": uploaded
        default: nil
        }
    }

    /// When a backup of `kind` created at `created` expires, in `timeZone`;
    /// an unknown kind is kept as long as an on-demand backup.
    public func expiry(of kind: String, created: Date, in timeZone: TimeZone) -> Date {
        (period(of: kind) ?? onDemand).end(after: created, in: timeZone)
    }
}
