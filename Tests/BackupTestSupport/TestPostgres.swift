import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import Foundation
import NIOPosix
import Synchronization

/// The private PostgreSQL cluster that `make test` starts (scripts/dev-cluster.sh)
/// and the demo app it holds. Each test makes its own databases and drops them.
public enum TestPostgres {
    public static let port = ProcessInfo.processInfo.environment["BACKUPD_PGPORT"] ?? "55432"
    public static let varDirectory = ProcessInfo.processInfo.environment["BACKUPD_VAR"] ?? "\(projectRoot)/.var"
    public static let demoFiles = "\(varDirectory)/demo/files"

    public static func connectionString(_ database: String) -> String {
        "host=127.0.0.1 port=\(port) user=postgres dbname=\(database)"
    }

    /// Runs statements on a database of the cluster.
    @discardableResult
    public static func query(_ database: String, _ sql: String, _ parameters: String...) throws -> [PostgresRow] {
        try query(database, sql, parameters: parameters)
    }

    private static func query(_ database: String, _ sql: String, parameters: [String]) throws -> [PostgresRow] {
        guard let reused = idleSessions.take(database) else {
            let connection = try PostgresConnection(connectionString(database))
            defer { idleSessions.keep(connection, of: database) }
            return try connection.query(sql, parameters: parameters)
        }
        do {
            defer { idleSessions.keep(reused, of: database) }
            return try reused.query(sql, parameters: parameters)
        } catch where !reused.isHealthy {
            // Ended while idle (a test terminated the catalog's sessions): the statement never ran.
            return try PostgresConnection(connectionString(database)).query(sql, parameters: parameters)
        }
    }

    /// The same from async code, on a thread of `blockingThreads`: a round
    /// trip (a CREATE DATABASE takes a tenth of a second) never holds one of
    /// the cooperative pool's threads, which the servers a test runs in its
    /// own process need (two on this machine).
    @discardableResult
    public static func query(_ database: String, _ sql: String, _ parameters: String...) async throws -> [PostgresRow] {
        try await offThePool { [parameters] in try query(database, sql, parameters: parameters) }
    }

    /// A new empty database (or a copy of `template`) with a unique name.
    public static func createDatabase(_ prefix: String, template: String? = nil) throws -> String {
        let name = uniqueName(prefix)
        try query("postgres", "CREATE DATABASE \(name)" + (template.map { " TEMPLATE \($0)" } ?? ""))
        return name
    }

    /// `prefix`, `_` and 8 random characters: a database name no other test uses.
    public static func uniqueName(_ prefix: String) -> String {
        "\(prefix)_\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// The same from async code, off the cooperative pool.
    public static func createDatabase(_ prefix: String, template: String? = nil) async throws -> String {
        try await offThePool { try createDatabase(prefix, template: template) as String }
    }

    public static func dropDatabase(_ name: String) {
        idleSessions.forget(name)
        _ = try? query("postgres", "DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
    }

    /// The same from async code, off the cooperative pool.
    public static func dropDatabase(_ name: String) async {
        _ = try? await offThePool { dropDatabase(name) as Void }
    }

    /// Row count and an order-independent checksum of every table in the
    /// public schema, to compare two databases.
    public static func tableFingerprints(_ database: String) throws -> [String: String] {
        try tableFingerprints(connectingTo: connectionString(database))
    }

    /// The same, of the database a connection string names (on any cluster).
    public static func tableFingerprints(connectingTo connectionString: String) throws -> [String: String] {
        let connection = try PostgresConnection(connectionString)
        let tables = try connection.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
            .map { $0.string("tablename") }
        var fingerprints: [String: String] = [:]
        for table in tables {
            let quoted = "\"" + table.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            let row = try connection.query("""
                SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS sum FROM \(quoted) t
                """)[0]
            fingerprints[table] = "\(row.string("n")) rows, md5 \(row.string("sum"))"
        }
        return fingerprints
    }
}

/// Sessions that tests' queries leave open for the next query of the same
/// database, for the databases tests poll (catalogs, `postgres`): a new
/// session costs PostgreSQL a process and milliseconds of CPU, and polls
/// made thousands of them a run. App databases are never kept: a restore
/// renames them, which a session left open would refuse.
final class IdleSessions: Sendable {
    private let sessions = Mutex<[String: [PostgresConnection]]>([:])
    private let reusable = Mutex<Set<String>>(["postgres"])

    /// Sessions of `database` are kept from now until it is forgotten.
    func reuse(_ database: String) { reusable.withLock { _ = $0.insert(database) } }

    func take(_ database: String) -> PostgresConnection? {
        sessions.withLock { $0[database]?.popLast() }
    }

    /// Keeps a healthy session outside a transaction, up to two a database; closes any other.
    func keep(_ connection: PostgresConnection, of database: String) {
        guard connection.isHealthy, !connection.isInTransaction, reusable.withLock({ $0.contains(database) }) else { return }
        sessions.withLock { if $0[database, default: []].count < 2 { $0[database, default: []].append(connection) } }
    }

    /// Closes the sessions of a database about to be dropped.
    func forget(_ database: String) {
        reusable.withLock { _ = $0.remove(database) }
        _ = sessions.withLock { $0.removeValue(forKey: database) }
    }
}

let idleSessions = IdleSessions()

/// The repository root, found from this file's path.
public let projectRoot: String = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Threads for the tests' blocking work (libpq round trips), so that it
/// never holds the cooperative pool's threads.
let blockingThreads: NIOThreadPool = {
    let threads = NIOThreadPool(numberOfThreads: 16)
    threads.start()
    return threads
}()

/// Runs blocking work on `blockingThreads` and waits for it without holding a thread.
public func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await blockingThreads.runIfActive(body)
}

/// Waits until a session of `database` has LISTENed for job changes (the
/// catalog's listener is in place), polling pg_stat_activity.
public func waitUntilListening(in database: String) async throws {
    for _ in 0..<1000 {
        let listening = try await TestPostgres.query("postgres", """
            SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND query = 'LISTEN job_changed' AND state = 'idle'
            """, database)[0].int64("n")
        if listening > 0 { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    throw TestSupportError("no session of \(database) listens for job changes")
}

/// A scratch folder removed by `remove()`.
public struct ScratchDirectory: Sendable {
    public let path: String

    public init(_ prefix: String) throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// The result of a finished command.
public struct CommandResult: Sendable {
    public let status: Int32
    public let standardOutput: String
    public let standardError: String
}

/// How long a command a test runs may take before it is killed and the test
/// fails naming it: a hung child (a CLI waiting on a job that never ends)
/// must fail its test with its output, never hold `make test` until CI's limit.
public let commandTimeLimit: TimeInterval = 600

/// Runs a program to its end and returns its status and output; a program
/// still running after `timeLimit` seconds is killed and the call throws.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       timeLimit: TimeInterval = commandTimeLimit) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let scratch = try ScratchDirectory("cmd")
    defer { scratch.remove() }
    let outPath = scratch.path + "/out", errPath = scratch.path + "/err"
    guard FileManager.default.createFile(atPath: outPath, contents: nil),
          FileManager.default.createFile(atPath: errPath, contents: nil) else {
        throw TestSupportError("cannot create output files in \(scratch.path)")
    }
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    process.standardInput = FileHandle.nullDevice
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }
    try process.run()
    if exited.wait(timeout: .now() + timeLimit) == .timedOut {
        kill(process.processIdentifier, SIGKILL)
        exited.wait()
        let standardError = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        throw TestSupportError("\(executable) \(arguments.joined(separator: " ")) still ran after \(Int(timeLimit)) s and was killed; "
                               + "its standard error:\n\(standardError.suffix(4000))")
    }
    return CommandResult(status: process.terminationStatus,
                         standardOutput: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                         standardError: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
}

/// `runCommand` on a thread of its own, for async tests: waiting for the
/// command never holds a thread of the cooperative pool, which a server run
/// inside the test process (`InProcessServer`) needs to answer it.
public func runCommand(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                       timeLimit: TimeInterval = commandTimeLimit) async throws -> CommandResult {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(with: Result {
                try runCommand(executable, arguments, environment: environment, timeLimit: timeLimit) as CommandResult
            })
        }.start()
    }
}

/// A command run in the background, its output discarded, until `stop`.
public final class BackgroundCommand: Sendable {
    private let process: Process

    public init(_ executable: String, _ arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    public var isRunning: Bool { process.isRunning }
    /// The exit status, once it has ended.
    public var terminationStatus: Int32 { process.terminationStatus }

    /// Ends the command and waits for it. SIGKILL: a child inherits the test
    /// process's blocked signals, SIGTERM among them, so `terminate()` leaves it running.
    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// The SHA-256 of every file under a folder, by path relative to it.
public func folderFingerprint(_ root: String) throws -> [String: String] {
    guard let walker = FileManager.default.enumerator(atPath: root) else { return [:] }
    var fingerprints: [String: String] = [:]
    while let relative = walker.nextObject() as? String {
        var isDirectory: ObjCBool = false
        let path = "\(root)/\(relative)"
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
        fingerprints[relative] = ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: path))).hex
    }
    return fingerprints
}

/// Databases of the cluster whose names contain `fragment`.
public func databases(containing fragment: String) throws -> [String] {
    try TestPostgres.query("postgres", "SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0 ORDER BY 1", fragment)
        .map { $0.string("datname") }
}
