import BackupRules
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

    @Test func aPolicyFromTheAPIKeepsDefaultsForZeroAndRefusesMoreThanTenYears() throws {
        let policy = try RetentionPolicy(nightlyDays: 0, weeklyMonths: 6, monthlyMonths: 0, onDemandDays: 30, uploadedDays: 0)
        #expect(policy.nightly == .days(14) && policy.weekly == .months(6) && policy.monthly == .months(12))
        #expect(policy.onDemand == .days(30) && policy.uploaded == .days(14))
        #expect(throws: BackupError.invalidArgument("uploaded retention of 3651 days is longer than 3650 days")) {
            try RetentionPolicy(nightlyDays: 0, weeklyMonths: 0, monthlyMonths: 0, onDemandDays: 0, uploadedDays: 3651)
        }
    }
}

/// The nightly window: which night is due, and what kind its backup is.
@Suite struct NightlyWindowTests {
    static let amsterdam = TimeZone(identifier: "Europe/Amsterdam")!

    private func local(_ year: Int, _ month: Int, _ day: Int, _ hour: Int, _ minute: Int = 0) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = Self.amsterdam
        return calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute))!
    }

    private let longAgo = Date(timeIntervalSince1970: 0)

    @Test func theSundayRunIsWeeklyAndTheFirstSundayRunOfAMonthMonthly() throws {
        let window = try NightlyWindow(start: "02:00", timeZone: "Europe/Amsterdam")
        // November 2026: Sunday the 1st is the month's first Sunday; the 8th, 15th, 22nd and 29th are not.
        let kinds = (1...30).map { window.dueNight(at: local(2026, 11, $0, 2, 1), offset: 0, since: longAgo)!.kind }
        #expect(kinds.enumerated().filter { $0.element == "monthly" }.map { $0.offset + 1 } == [1])
        #expect(kinds.enumerated().filter { $0.element == "weekly" }.map { $0.offset + 1 } == [8, 15, 22, 29])
        #expect(kinds.filter { $0 == "nightly" }.count == 25)
        // The first Sunday may be the 7th (February 2027), never the 8th.
        #expect(window.dueNight(at: local(2027, 2, 7, 3), offset: 0, since: longAgo)?.kind == "monthly")
        #expect(window.dueNight(at: local(2027, 2, 14, 3), offset: 0, since: longAgo)?.kind == "weekly")
    }

    @Test func aNightIsDueFromItsWindowPlusItsOffsetForADay() throws {
        let window = try NightlyWindow(start: "23:30", timeZone: "Europe/Amsterdam")
        // Before the window opens, the night due is the previous one, within its 24 hours.
        #expect(window.dueNight(at: local(2026, 11, 26, 23, 0), offset: 0, since: longAgo)?.description == "2026-11-25")
        #expect(window.dueNight(at: local(2026, 11, 26, 23, 30), offset: 0, since: longAgo)?.description == "2026-11-26")
        // An environment placed 20 minutes into the spread starts 20 minutes later.
        #expect(window.dueNight(at: local(2026, 11, 26, 23, 45), offset: 1200, since: longAgo)?.description == "2026-11-25")
        #expect(window.dueNight(at: local(2026, 11, 26, 23, 50), offset: 1200, since: longAgo)?.due == local(2026, 11, 26, 23, 50))
        // Past midnight the night keeps the date its window opened on.
        #expect(window.dueNight(at: local(2026, 11, 27, 1, 0), offset: 0, since: longAgo)?.description == "2026-11-26")
        // A night whose window opened before the environment existed is not made up.
        #expect(window.dueNight(at: local(2026, 11, 27, 1, 0), offset: 0, since: local(2026, 11, 27, 0, 0)) == nil)
    }

    @Test func theNextNightIsTheFirstWhoseBackupFallsDueAfterNow() throws {
        let window = try NightlyWindow(start: "23:30", timeZone: "Europe/Amsterdam")
        let cases: [(now: Date, offset: TimeInterval, due: Date)] = [
            (local(2026, 11, 26, 12, 0), 0, local(2026, 11, 26, 23, 30)),
            // At the very moment a night falls due, the next is tomorrow's.
            (local(2026, 11, 26, 23, 30), 0, local(2026, 11, 27, 23, 30)),
            (local(2026, 11, 27, 0, 10), 0, local(2026, 11, 27, 23, 30)),
            // 20 minutes into the spread: due 23:50, also past midnight of the window's date.
            (local(2026, 11, 26, 23, 40), 1200, local(2026, 11, 26, 23, 50)),
            (local(2026, 11, 26, 23, 50), 1200, local(2026, 11, 27, 23, 50)),
            // Across the end of a month and a year.
            (local(2026, 12, 31, 23, 45), 0, local(2027, 1, 1, 23, 30)),
        ]
        for (now, offset, due) in cases {
            #expect(window.nextNight(after: now, offset: offset)?.due == due, "now \(now), offset \(offset)")
        }
        // The next night is the one due once it has come.
        let next = try #require(window.nextNight(after: local(2026, 11, 26, 12, 0), offset: 600))
        #expect(window.dueNight(at: next.due, offset: 600, since: longAgo) == next)
    }

    @Test func daylightSavingMovesTheWindowWithTheWallClock() throws {
        let window = try NightlyWindow(start: "02:30", timeZone: "Europe/Amsterdam")
        // 25 October 2026, clocks go back at 03:00: 02:30 happens twice; the night is due at the first.
        let autumn = try #require(window.dueNight(at: local(2026, 10, 25, 4), offset: 0, since: longAgo))
        #expect(autumn.description == "2026-10-25" && autumn.kind == "weekly")
        // 28 March 2027, clocks go forward at 02:00: 02:30 does not exist; the night is still due that morning.
        let spring = try #require(window.dueNight(at: local(2027, 3, 28, 4), offset: 0, since: longAgo))
        #expect(spring.description == "2027-03-28")
        #expect(spring.due <= local(2027, 3, 28, 4) && spring.due >= local(2027, 3, 28, 1))
        // In UTC terms the window opens an hour apart in winter and summer.
        let winter = window.dueNight(at: local(2027, 1, 10, 3), offset: 0, since: longAgo)!.due
        let summer = window.dueNight(at: local(2027, 7, 10, 3), offset: 0, since: longAgo)!.due
        #expect(Int(winter.timeIntervalSince1970) % 86_400 == 5400 && Int(summer.timeIntervalSince1970) % 86_400 == 1800)
    }

    @Test func everyZoneOfTheSystemsDatabaseIsTakenByItsOwnName() throws {
        for name in ["UTC", "Etc/UTC", "Asia/Kolkata", "Asia/Calcutta", "Etc/GMT+5", "CET", "America/Argentina/Buenos_Aires", "GMT+0", "US/Eastern"] {
            #expect(try NightlyWindow(start: "00:00", timeZone: name).zoneName == name)
        }
        #expect(try NightlyWindow(start: "01:00", timeZone: "Etc/GMT-14").timeZone.secondsFromGMT() == 14 * 3600)
        for name in ["Europe", "posix/../../etc/passwd", "/etc/localtime", "Europe//Amsterdam", "europe/amsterdam", "GMT+0500", "GMT+5", "UTC-3", ""] {
            #expect(throws: BackupError.self) { try NightlyWindow(start: "00:00", timeZone: name) }
        }
        // A name the catalog holds that this system does not know counts as UTC, and says so.
        let stored = NightlyWindow(minutes: 90, zoneName: "Mars/Olympus_Mons")
        #expect(!stored.knowsZone && stored.timeZone.secondsFromGMT() == 0 && stored.start == "01:30")
    }

    @Test func windowsAreRefusedNamingWhatIsWrong() {
        #expect(throws: BackupError.invalidArgument("window start \"7pm\" is not a time of day as HH:MM (00:00 to 23:59)")) {
            try NightlyWindow(start: "7pm", timeZone: "UTC")
        }
        #expect(throws: BackupError.invalidArgument(
            "time zone \"CET?[2J\" is not an IANA time zone name such as Europe/Amsterdam or UTC")) {
            try NightlyWindow(start: "19:00", timeZone: "CET\u{1B}[2J")
        }
        #expect(NightlyWindow.offset(for: "acme/shop", spread: .seconds(3600)) == NightlyWindow.offset(for: "acme/shop", spread: .seconds(3600)))
        let offsets = Set((0..<500).map { NightlyWindow.offset(for: "ns/env-\($0)", spread: .seconds(3600)) })
        #expect(offsets.count > 400 && offsets.allSatisfy { $0 >= 0 && $0 < 3600 })
    }
}
