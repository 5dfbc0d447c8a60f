import ArgumentParser
import BackupClient
import BackupWire
import Foundation

struct ScheduleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedule", abstract: "Show or change an environment's nightly backups and how long backups are kept.",
        subcommands: [ShowSchedule.self, SetSchedule.self], defaultSubcommand: ShowSchedule.self)
}

struct ShowSchedule: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show an environment's schedule and retention.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Environment, NAMESPACE/NAME.") var env: EnvironmentRef

    func run() async throws {
        let env = env
        let schedule = try await global.withClient { client in
            try await client.unary(Backups.getSchedule, .with { $0.namespace = env.namespace; $0.environment = env.name })
        }
        global.output(schedule, human: Format.schedule)
    }
}

struct SetSchedule: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set", abstract: "Change an environment's schedule; what is not given stays as it is.",
        discussion: """
            Retention is days (14d) for nightly, on-demand and uploaded backups, and calendar months (3m) for weekly \
            and monthly ones, counted from each backup's creation in the schedule's time zone. Existing backups keep the \
            expiry they were given unless --apply-to-existing is given.
            """)
    @OptionGroup var global: GlobalOptions
    @Option(help: "Environment, NAMESPACE/NAME.") var env: EnvironmentRef
    @Option(help: "When the nightly window opens, HH:MM local time.") var time: String?
    @Option(help: "IANA time zone of the window and of the retention calendar, e.g. Europe/Amsterdam.") var tz: String?
    @Flag(help: "Turn automatic backups on.") var enable = false
    @Flag(help: "Turn automatic backups off (existing backups are kept as long as promised).") var disable = false
    @Option(help: "Keep nightly backups this many days, e.g. 14d.") var keepNightly: Retention?
    @Option(help: "Keep weekly (Sunday) backups this many months, e.g. 3m.") var keepWeekly: Retention?
    @Option(help: "Keep monthly (first Sunday) backups this many months, e.g. 12m.") var keepMonthly: Retention?
    @Option(help: "Keep on-demand backups this many days, e.g. 14d.") var keepOnDemand: Retention?
    @Option(help: "Keep uploaded backups this many days, e.g. 14d.") var keepUploaded: Retention?
    @Flag(inversion: .prefixedNo, help: "Verify each nightly backup after it is made.") var verify: Bool?
    @Flag(help: "Re-date existing backups by the new retention, and say how many changed.") var applyToExisting = false

    func validate() throws {
        guard !(enable && disable) else { throw ValidationError("give --enable or --disable, not both") }
        for (flag, value, unit) in [("--keep-nightly", keepNightly, Retention.Unit.days), ("--keep-weekly", keepWeekly, .months),
                                    ("--keep-monthly", keepMonthly, .months), ("--keep-on-demand", keepOnDemand, .days),
                                    ("--keep-uploaded", keepUploaded, .days)] {
            if let value, value.unit != unit {
                throw ValidationError("\(flag) is counted in \(unit) (\(unit == .days ? "14d" : "3m")), not \(value.unit)")
            }
        }
    }

    func run() async throws {
        let options = self
        let schedule = try await global.withClient { client in
            var schedule = try await client.unary(Backups.getSchedule, .with { $0.namespace = options.env.namespace; $0.environment = options.env.name })
            if let time = options.time { schedule.windowStart = time }
            if let tz = options.tz { schedule.timeZone = tz }
            if options.enable || options.disable { schedule.enabled = options.enable }
            if let verify = options.verify { schedule.verifyNightly = verify }
            if let keep = options.keepNightly { schedule.retention.nightlyDays = keep.count }
            if let keep = options.keepWeekly { schedule.retention.weeklyMonths = keep.count }
            if let keep = options.keepMonthly { schedule.retention.monthlyMonths = keep.count }
            if let keep = options.keepOnDemand { schedule.retention.onDemandDays = keep.count }
            if let keep = options.keepUploaded { schedule.retention.uploadedDays = keep.count }
            let request = SetScheduleRequest.with { $0.schedule = schedule; $0.applyToExisting = options.applyToExisting }
            return try await client.unary(Backups.setSchedule, request)
        }
        global.output(schedule) { schedule in
            Format.schedule(schedule) + (options.applyToExisting ? "\n\(schedule.backupsRedated) existing backups re-dated" : "")
        }
    }
}

/// A retention period as given on the command line: "14d" or "3m".
struct Retention: ExpressibleByArgument, Sendable {
    enum Unit: String, Sendable, CustomStringConvertible {
        case days, months
        var description: String { rawValue }
    }
    let count: UInt32
    let unit: Unit

    init?(argument: String) {
        guard let match = argument.wholeMatch(of: /([1-9][0-9]{0,3})([dm])/), let count = UInt32(match.output.1) else { return nil }
        self.count = count
        unit = match.output.2 == "d" ? .days : .months
    }
}

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read every blob of a backup, check each SHA-256 and the dump; the finding is kept on the backup.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup ID.") var id: String
    @Flag(help: "Wait for the verification, with a progress bar on a terminal, and show what it found.") var wait = false

    func run() async throws {
        let (id, wait, global) = (id, wait, global)
        let (job, backup) = try await global.withClient { client in
            let job = try await client.unary(Backups.verifyBackup, .with { $0.id = id })
            guard wait else { return (job, Backup?.none) }
            let ended = try await follow(job.id, client: client, quiet: global.json)
            return (ended, try await client.unary(Backups.getBackup, .with { $0.id = id }))
        }
        if let backup {
            global.output(backup) { Format.verification($0) }
            if backup.verification?.intact != true { throw ExitCode(1) }
        } else {
            global.output(job, human: Format.job)
        }
        if job.status == .failed && backup == nil { throw ExitCode(1) }
    }
}
