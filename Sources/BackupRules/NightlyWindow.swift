import Foundation

/// When an environment's automatic backups run: a window opening each night
/// at a wall-clock time in an IANA time zone. Pure code with the clock
/// given, so the scheduler's choices are tested night by night without
/// waiting for nights.
public struct NightlyWindow: Sendable, Hashable {
    /// Attempts at one night's backup: the first run and two retries.
    public static let attempts = 3

    /// Minutes after local midnight at which the window opens.
    public let minutes: Int
    public let timeZone: TimeZone
    /// The zone's name as given ("UTC" stays "UTC").
    public let zoneName: String

    /// A window from "HH:MM" (24-hour) and a name in the system's IANA time
    /// zone database such as "Europe/Amsterdam" or "UTC"; refused, naming
    /// the value, otherwise.
    public init(start: String, timeZone name: String) throws(BackupError) {
        guard let match = start.wholeMatch(of: /([01][0-9]|2[0-3]):([0-5][0-9])/), let hour = Int(match.output.1),
              let minute = Int(match.output.2) else {
            throw .invalidArgument("window start \(Self.quoted(start)) is not a time of day as HH:MM (00:00 to 23:59)")
        }
        // A name of the database: letters first in every part, so no "..", no absolute path; and not an offset that
        // Foundation reads without the database ("GMT+0500"), but for the database's own GMT+0 and GMT-0.
        guard name.utf8.count <= 64, name.wholeMatch(of: /[A-Za-z][A-Za-z0-9_+\-]*(\/[A-Za-z][A-Za-z0-9_+\-]*)*/) != nil,
              name.wholeMatch(of: /(GMT|UTC)[+\-].*/) == nil || name == "GMT+0" || name == "GMT-0",
              let zone = TimeZone(identifier: name) else {
            throw .invalidArgument("time zone \(Self.quoted(name)) is not an IANA time zone name such as Europe/Amsterdam or UTC")
        }
        self.minutes = hour * 60 + minute
        self.timeZone = zone
        self.zoneName = name
    }

    /// A window as the catalog keeps it, checked when it was set. A zone
    /// this system no longer knows counts as UTC (`knowsZone` says so), so
    /// the environment still gets its nightly backup.
    public init(minutes: Int, zoneName: String) {
        self.minutes = min(max(0, minutes), 1439)
        self.zoneName = zoneName
        self.timeZone = TimeZone(identifier: zoneName) ?? .gmt
    }

    /// Whether the zone's name was found; false when `init(minutes:zoneName:)` fell back to UTC.
    public var knowsZone: Bool { TimeZone(identifier: zoneName) != nil }

    /// The start as "HH:MM".
    public var start: String { String(format: "%02d:%02d", minutes / 60, minutes % 60) }

    /// The night whose backup is due at `now`: the latest one whose window
    /// opened, plus this environment's `offset` into it, at most 24 hours
    /// before `now` (a night missed while no backupd ran is made up only
    /// that long), and not before `since` (the schedule, or environment,
    /// did not exist yet). Nil when no night is due.
    public func dueNight(at now: Date, offset: TimeInterval, since: Date) -> Night? {
        let calendar = Night.calendar(in: timeZone)
        let today = calendar.dateComponents([.year, .month, .day], from: now.addingTimeInterval(-offset))
        guard let midnight = calendar.date(from: today) else { return nil }
        for back in 0...1 {
            guard let day = calendar.date(byAdding: .day, value: -back, to: midnight),
                  let night = Night(day, window: self, offset: offset) else { continue }
            if night.due <= now {
                return now.timeIntervalSince(night.due) < 86_400 && night.due >= since ? night : nil
            }
        }
        return nil
    }

    /// The first night whose backup falls due after `now`, this
    /// environment's `offset` into its window included: when its next
    /// automatic backup starts, as the metrics report it.
    public func nextNight(after now: Date, offset: TimeInterval) -> Night? {
        let calendar = Night.calendar(in: timeZone)
        let today = calendar.dateComponents([.year, .month, .day], from: now.addingTimeInterval(-offset))
        guard let midnight = calendar.date(from: today) else { return nil }
        for ahead in 0...2 {
            guard let day = calendar.date(byAdding: .day, value: ahead, to: midnight),
                  let night = Night(day, window: self, offset: offset) else { continue }
            if night.due > now { return night }
        }
        return nil
    }

    /// Where in the window an environment's backup starts: a fixed share of
    /// `spread` chosen by a hash of `key`, so many environments with one
    /// window do not all start in the same second, and each starts at the
    /// same time every night.
    public static func offset(for key: String, spread: Duration) -> TimeInterval {
        let seconds = max(1, spread.components.seconds)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return TimeInterval(hash % UInt64(seconds))
    }

    static func quoted(_ value: String) -> String {
        quotedPrintable(value, longest: 64)
    }
}

/// One night of a schedule: the local date its window opened, when its
/// backup is due, and what kind that backup is. The Sunday run is weekly;
/// the Sunday run in the first seven days of a month is monthly, so a month
/// whose first run comes after its first Sunday has no monthly backup.
public struct Night: Sendable, Hashable, CustomStringConvertible {
    public let year: Int
    public let month: Int
    public let day: Int
    public let due: Date
    /// "nightly", "weekly" or "monthly": the catalog's name of the kind.
    public let kind: String

    init?(_ midnight: Date, window: NightlyWindow, offset: TimeInterval) {
        let calendar = Self.calendar(in: window.timeZone)
        let date = calendar.dateComponents([.year, .month, .day, .weekday], from: midnight)
        guard let year = date.year, let month = date.month, let day = date.day, let weekday = date.weekday,
              let opens = calendar.date(from: DateComponents(year: year, month: month, day: day,
                                                             hour: window.minutes / 60, minute: window.minutes % 60)) else {
            return nil
        }
        self.year = year
        self.month = month
        self.day = day
        self.due = opens.addingTimeInterval(offset)
        self.kind = weekday != 1 ? "nightly" : day <= 7 ? "monthly" : "weekly"
    }

    /// The local date, "YYYY-MM-DD".
    public var description: String { String(format: "%04d-%02d-%02d", year, month, day) }

    static func calendar(in zone: TimeZone) -> Calendar {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        return calendar
    }
}
