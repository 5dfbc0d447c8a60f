import Foundation

/// How long a backup is kept: days or calendar months, counted from its
/// creation in its environment's time zone, so a promise of "3 months"
/// means the same date three months on (22 October → 22 January), clamped
/// to the month's last day (31 August → 30 November), whatever daylight
/// saving did in between.
public enum RetentionPeriod: Sendable, Hashable {
    case days(Int)
    case months(Int)

    /// The count of days or months.
    public var count: Int {
        switch self {
        case .days(let count), .months(let count): count
        }
    }

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

    /// Up to ten years, in days or months.
    public static let longestDays = 3650, longestMonths = 120

    /// A policy of whole days and months; a value of 0 keeps that kind's
    /// default. Refused, naming the kind, past ten years.
    public init(nightlyDays: Int, weeklyMonths: Int, monthlyMonths: Int, onDemandDays: Int, uploadedDays: Int) throws(BackupError) {
        func period(_ count: Int, _ make: (Int) -> RetentionPeriod, _ name: String, _ longest: Int, _ unit: String,
                    default: RetentionPeriod) throws(BackupError) -> RetentionPeriod {
            guard count <= longest else { throw .invalidArgument("\(name) retention of \(count) \(unit) is longer than \(longest) \(unit)") }
            return count == 0 ? `default` : make(count)
        }
        nightly = try period(nightlyDays, RetentionPeriod.days, "nightly", Self.longestDays, "days", default: nightly)
        weekly = try period(weeklyMonths, RetentionPeriod.months, "weekly", Self.longestMonths, "months", default: weekly)
        monthly = try period(monthlyMonths, RetentionPeriod.months, "monthly", Self.longestMonths, "months", default: monthly)
        onDemand = try period(onDemandDays, RetentionPeriod.days, "on-demand", Self.longestDays, "days", default: onDemand)
        uploaded = try period(uploadedDays, RetentionPeriod.days, "uploaded", Self.longestDays, "days", default: uploaded)
    }

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
