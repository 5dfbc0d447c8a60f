import BackupCatalog
import BackupPostgres
import BackupRules
import BackupStorage
import Foundation
import Subprocess
import SystemPackage

/// A failed external command, with the end of what it wrote to standard error.
struct ToolFailure: Error, CustomStringConvertible {
    let command: String
    let outcome: String
    let standardError: String

    var description: String {
        let detail = standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        return "\(command) \(outcome)" + (detail.isEmpty ? "" : ": \(detail)")
    }
}

/// Runs an external program (pg_dump, pg_restore) to completion through
/// swift-subprocess, in an environment of its own (`childEnvironment`).
///
/// The program leads a process group of its own, so cancelling the task
/// stops it and anything it started: SIGTERM to the group, then SIGKILL
/// five seconds later. It is started through `setpriv --pdeathsig KILL`, so
/// it dies with backupd even when backupd is killed outright. Standard error
/// comes through a pipe of which only the last 16 KiB are kept: the reason
/// a tool gives survives even when the disk it would write to is full.
func runSubprocess(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) async throws {
    var options = PlatformOptions()
    options.processGroupID = 0
    options.teardownSequence = [.gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: .seconds(5))]
    var variables: [Environment.Key: String] = [:]
    for (name, value) in childEnvironment.merging(environment, uniquingKeysWith: { $1 }) { variables[Environment.Key(stringLiteral: name)] = value }
    let command = URL(fileURLWithPath: executable).lastPathComponent

    let result: ExecutionResult<[UInt8], DiscardedOutput, SequenceOutput>
    do {
        result = try await run(
            .path(FilePath(parentDeathGuard)), arguments: Arguments(["--pdeathsig", "KILL", "--", executable] + arguments),
            environment: .custom(variables), platformOptions: options, input: .none, output: .discarded, error: .sequence
        ) { execution in
            var tail: [UInt8] = []
            for try await buffer in execution.standardError {
                buffer.withUnsafeBytes { tail.append(contentsOf: $0) }
                if tail.count > standardErrorKept { tail.removeFirst(tail.count - standardErrorKept) }
            }
            return tail
        }
    } catch let error as CancellationError {
        throw error
    } catch {
        throw ToolFailure(command: command, outcome: "could not start", standardError: "\(error)")
    }
    try Task.checkCancellation()

    let outcome: String
    switch result.terminationStatus {
    case .exited(0): return
    case .exited(let code): outcome = "exited with status \(code)"
    case .signaled(let signal): outcome = "was killed by signal \(signal)"
    }
    throw ToolFailure(command: command, outcome: outcome, standardError: String(decoding: result.closureResult, as: UTF8.self))
}

/// How much of a tool's standard error is kept: its last lines say why it failed.
private let standardErrorKept = 16 * 1024

/// util-linux's `setpriv`: sets the parent-death signal, then executes the tool.
private let parentDeathGuard = "/usr/bin/setpriv"

/// All that a child process sees of the environment besides what its caller
/// gives: nothing of backupd's own (no PG* variables, no HOME with its
/// `.pgpass` and client certificates).
private let childEnvironment = ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"]

/// Runs a PostgreSQL client tool (pg_dump, pg_restore) against a database.
/// The connection string goes to `--dbname` without its password, which goes
/// in PGPASSWORD, so no process listing shows it. While the tool runs,
/// `progress` is asked every half second (of `clock`) how far it has come;
/// when that has not changed for `stallTimeout`, the tool is stopped and the
/// job fails saying so.
func runPostgresTool(_ executable: String, _ arguments: [String], database connectionString: String,
                     stallTimeout: Duration, clock: any ServiceClock, progress: @escaping @Sendable () async -> UInt64) async throws {
    let (url, password) = try ConnectionString.withoutPassword(connectionString)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            try await runSubprocess(executable, ["--dbname=\(url)"] + arguments,
                                    environment: password.map { ["PGPASSWORD": $0] } ?? [:])
        }
        group.addTask {
            var last = UInt64.max
            var lastChange = clock.now
            while true {
                try await clock.sleep(for: .milliseconds(500))
                let now = await progress()
                if now != last {
                    (last, lastChange) = (now, clock.now)
                } else if lastChange.duration(to: clock.now) >= stallTimeout {
                    throw JobFailure(description: "\(URL(fileURLWithPath: executable).lastPathComponent) made no progress for "
                                     + "\(stallTimeout.components.seconds) seconds (--tool-stall-seconds); it was stopped")
                }
            }
        }
        try await group.next()
        group.cancelAll()
    }
}

extension PostgresTools {
    /// Runs `pg_restore --list` on a dump, writing the listing to `scratch`
    /// (removed after), so a dump it cannot read fails with `ToolFailure`;
    /// returns the server version the dump says it was made from.
    func listDump(_ dumpPath: String, scratch listingPath: String) async throws -> String {
        defer { FileSystem.remove(listingPath) }
        try await runSubprocess(pgRestore, ["--list", "--file=\(listingPath)", dumpPath])
        // The listing's header says, e.g. ";     Dumped from database version: 17.6 (Debian 17.6-1)".
        let listing = try String(contentsOfFile: listingPath, encoding: .utf8)
        let marker = "Dumped from database version:"
        for line in listing.split(separator: "\n") where line.hasPrefix(";") {
            if let range = line.firstRange(of: marker) { return line[range.upperBound...].trimmingCharacters(in: .whitespaces) }
        }
        return ""
    }
}
