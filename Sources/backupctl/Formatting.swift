import BackupWire
import Foundation

/// Human output: aligned tables, sizes and times.
enum Format {
    /// Text from the server as a terminal may show it: control characters
    /// (escape sequences, carriage returns, newlines unless kept) and bidi
    /// overrides are written as `\u{…}`, so a name or comment cannot move
    /// the cursor, recolor the screen or forge a line.
    static func terminalSafe(_ text: String, keepingNewlines: Bool = false) -> String {
        var safe = ""
        for scalar in text.unicodeScalars {
            let control = scalar.properties.generalCategory == .control || (0x202A...0x202E).contains(scalar.value)
                || (0x2066...0x2069).contains(scalar.value)
            if control && !(keepingNewlines && scalar == "\n") {
                safe += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            } else {
                safe.unicodeScalars.append(scalar)
            }
        }
        return safe
    }

    static func table(_ header: [String], _ rows: [[String]]) -> String {
        let rows = rows.map { $0.map { terminalSafe($0) } }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        return ([header] + rows).map { row in
            row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }

    static func fields(_ pairs: [(String, String)]) -> String {
        let pairs = pairs.map { ($0.0, terminalSafe($0.1)) }
        let width = pairs.map(\.0.count).max() ?? 0
        return pairs.filter { !$0.1.isEmpty }.map { "\($0.0.padding(toLength: width, withPad: " ", startingAt: 0))  \($0.1)" }
            .joined(separator: "\n")
    }

    static func bytes(_ count: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    static func time(_ unixMS: Int64) -> String {
        guard unixMS > 0 else { return "" }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: Double(unixMS) / 1000))
    }

    static func backup(_ b: Backup) -> String {
        fields([("id", b.id), ("environment", "\(b.namespace)/\(b.environment)"), ("status", "\(b.status)"),
                ("kind", "\(b.kind)"), ("comment", b.comment), ("created", time(b.createdUnixMS)),
                ("finished", time(b.finishedUnixMS)), ("expires", time(b.expiresUnixMS)),
                ("package", b.packageVersion), ("size", b.status == .finished ? bytes(b.sizeBytes) : ""),
                ("database", b.status == .finished ? bytes(b.databaseBytes) : ""),
                ("files", b.status == .finished ? "\(b.fileCount) (\(bytes(b.filesBytes)))" : ""),
                ("postgres", b.postgresVersion), ("dump sha256", b.dumpSHA256), ("job", b.jobID), ("warning", b.warning),
                ("error", b.error), ("verified", b.verification.map(verificationSummary) ?? "")])
    }

    /// "intact at TIME (job J)", or how many problems, when and by which job.
    static func verificationSummary(_ v: Verification) -> String {
        (v.intact ? "intact" : "\(v.problemCount) problems") + " at \(time(v.verifiedUnixMS)) (job \(v.jobID))"
    }

    /// A backup's last verification and each problem it found, a line each.
    static func verification(_ b: Backup) -> String {
        guard let v = b.verification else { return "backup \(b.id) has not been verified" }
        return (["backup \(b.id): \(verificationSummary(v))"] + v.problems.map { "  \($0.name) (\($0.sha256)): \($0.problem)" }
            + (v.problemCount > UInt32(v.problems.count) ? ["  … \(v.problemCount - UInt32(v.problems.count)) more"] : []))
            .map { terminalSafe($0) }.joined(separator: "\n")
    }

    static func schedule(_ s: Schedule) -> String {
        let r = s.retention
        return fields([("environment", "\(s.namespace)/\(s.environment)"), ("nightly backups", s.enabled ? "enabled" : "disabled"),
                       ("window", "\(s.windowStart) \(s.timeZone)"), ("verify nightly", s.verifyNightly ? "yes" : "no"),
                       ("keep nightly", "\(r.nightlyDays) days"), ("keep weekly", "\(r.weeklyMonths) months (Sunday runs)"),
                       ("keep monthly", "\(r.monthlyMonths) months (first Sunday run of a month)"),
                       ("keep on demand", "\(r.onDemandDays) days"), ("keep uploaded", "\(r.uploadedDays) days")])
    }

    static func backups(_ backups: [Backup]) -> String {
        table(["ID", "ENVIRONMENT", "STATUS", "KIND", "CREATED", "EXPIRES", "SIZE", "FILES", "COMMENT"], backups.map {
            [$0.id, $0.environment, "\($0.status)", "\($0.kind)", time($0.createdUnixMS), time($0.expiresUnixMS),
             $0.status == .finished ? bytes($0.sizeBytes) : "", $0.status == .finished ? "\($0.fileCount)" : "", $0.comment]
        })
    }

    static func environment(_ e: Environment) -> String {
        fields([("environment", "\(e.namespace)/\(e.name)"), ("app", e.app), ("state", "\(e.state)"),
                ("package", e.packageVersion), ("database", e.databaseURL), ("file store", e.fileStorePath),
                ("file query", e.fileQuery), ("backups", "\(e.backupCount)"), ("created", time(e.createdUnixMS))])
    }

    static func job(_ j: Job) -> String {
        fields([("job", j.id), ("kind", "\(j.kind)"), ("status", "\(j.status)"), ("environment", "\(j.namespace)/\(j.environment)"),
                ("backup", j.backupID), ("phase", j.phase), ("progress", "\(bytes(j.bytesDone)) of \(bytes(j.bytesTotal))"),
                ("created", time(j.createdUnixMS)), ("started", time(j.startedUnixMS)), ("finished", time(j.finishedUnixMS)),
                ("error", j.error)])
    }

    static func token(_ t: Token) -> String {
        fields([("id", t.id), ("name", t.name), ("namespace", t.namespace), ("role", "\(t.role)"),
                ("created", time(t.createdUnixMS)), ("revoked", time(t.revokedUnixMS))])
    }
}

/// A one-line progress bar on standard error, redrawn in place: a job's
/// progress, or a transfer's with its rate and time left. Silent in
/// scripts (`--json`) and when standard error is not a terminal.
final class ProgressBar {
    private let enabled: Bool
    private var started = ContinuousClock.now
    private var startedAt: UInt64 = 0
    private var lastDrawn: ContinuousClock.Instant?

    init(quiet: Bool = false) {
        enabled = !quiet && isatty(STDERR_FILENO) == 1
    }

    func draw(_ job: Job) {
        line(done: job.bytesDone, total: job.bytesTotal, detail: Format.terminalSafe(job.phase))
    }

    /// A transfer begins (again) with `bytes` already held: its rate counts from here.
    func start(from bytes: UInt64) {
        (started, startedAt, lastDrawn) = (.now, bytes, nil)
    }

    /// Redrawn at most ten times a second, and at the end.
    func draw(transferred done: UInt64, of total: UInt64) {
        let now = ContinuousClock.now
        guard done >= total || lastDrawn.map({ now - $0 >= .milliseconds(100) }) ?? true else { return }
        lastDrawn = now
        let elapsed = Double((now - started).components.attoseconds) / 1e18 + Double((now - started).components.seconds)
        let rate = elapsed > 0 ? Double(done - min(done, startedAt)) / elapsed : 0
        let left = rate > 0 && total > done ? Int(Double(total - done) / rate) : 0
        line(done: done, total: total, detail: "\(Format.bytes(UInt64(rate)))/s, \(left / 60)m\(String(format: "%02d", left % 60))s left")
    }

    private func line(done: UInt64, total: UInt64, detail: String) {
        guard enabled else { return }
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 0
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let line = "[\(bar)] \(String(format: "%3.0f", fraction * 100))% \(Format.bytes(done)) / \(Format.bytes(total))  \(detail)"
        FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\n".utf8))
    }
}
