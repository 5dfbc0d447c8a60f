import BackupCore
import Foundation
import Testing

/// The retention calendar: calendar months and days counted in the
/// environment's time zone, across month ends, leap days, daylight saving
/// and the year's end.
@Suite struct RetentionCalendarTests {
    static let amsterdam = TimeZone(identifier: "Europe/Amsterdam")!

    /// A wall-clock time in `zone`.
    private func local(_ year: Int, _ month: Int, _ day: Int, _ hour: Int = 2, _ minute: Int = 0,
                       in zone: TimeZone = amsterdam) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        return calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute))!
    }

    @Test(arguments: [
        // The product's example: a weekly backup of 22 October expires on 22 January, at the same wall-clock time.
        ("weekly", [2026, 10, 22], [2027, 1, 22]),
        // Month ends clamp to the last day of the month reached.
        ("weekly", [2026, 8, 31], [2026, 11, 30]),
        ("weekly", [2026, 11, 30], [2027, 2, 28]),
        ("weekly", [2027, 11, 30], [2028, 2, 29]),
        // Leap days: a monthly backup of 29 February is kept to 28 February; 14 days cross 29 February.
        ("monthly", [2028, 2, 29], [2029, 2, 28]),
        ("monthly", [2027, 3, 7], [2028, 3, 7]),
        ("nightly", [2028, 2, 20], [2028, 3, 5]),
        ("nightly", [2027, 2, 20], [2027, 3, 6]),
        // The year's end.
        ("nightly", [2026, 12, 25], [2027, 1, 8]),
        ("on-demand", [2026, 12, 31], [2027, 1, 14]),
        ("uploaded", [2026, 12, 31], [2027, 1, 14]),
        ("an unknown kind", [2026, 12, 31], [2027, 1, 14]),
    ])
    func aPeriodEndsOnTheSameWallClockTimeItsCalendarSays(kind: String, created: [Int], expires: [Int]) {
        let expiry = RetentionPolicy().expiry(of: kind, created: local(created[0], created[1], created[2]), in: Self.amsterdam)
        #expect(expiry == local(expires[0], expires[1], expires[2]))
    }

    @Test func daylightSavingChangesKeepTheWallClockTimeInBothDirections() {
        let policy = RetentionPolicy()
        // Spring forward (29 March 2026, 02:00 → 03:00): 14 days are an hour short of 14 × 24 hours.
        let spring = local(2026, 3, 20, 0, 30)
        let springExpiry = policy.expiry(of: "nightly", created: spring, in: Self.amsterdam)
        #expect(springExpiry == local(2026, 4, 3, 0, 30))
        #expect(springExpiry.timeIntervalSince(spring) == 14 * 86_400 - 3600)
        // Fall back (25 October 2026, 03:00 → 02:00): an hour longer.
        let autumn = local(2026, 10, 20, 0, 30)
        let autumnExpiry = policy.expiry(of: "nightly", created: autumn, in: Self.amsterdam)
        #expect(autumnExpiry == local(2026, 11, 3, 0, 30))
        #expect(autumnExpiry.timeIntervalSince(autumn) == 14 * 86_400 + 3600)
        // The same instant in UTC keeps exactly 14 × 24 hours.
        #expect(policy.expiry(of: "nightly", created: autumn, in: .gmt).timeIntervalSince(autumn) == 14 * 86_400)
    }

    @Test func aPolicyMayBeChangedKindByKind() {
        var policy = RetentionPolicy()
        policy.weekly = .days(30)
        policy.monthly = .months(24)
        #expect(policy.expiry(of: "weekly", created: local(2026, 1, 31), in: Self.amsterdam) == local(2026, 3, 2))
        #expect(policy.expiry(of: "monthly", created: local(2026, 1, 31), in: Self.amsterdam) == local(2028, 1, 31))
    }
}
