import CLibPQ
import Glibc
import Synchronization

/// An error from PostgreSQL or libpq, with the SQLSTATE when the server sent one.
public struct PostgresError: Error, CustomStringConvertible {
    public let sqlState: String?
    public let message: String
    /// The constraint (or unique index) a violation names, when it names one.
    public var constraint: String? = nil

    public var description: String { message }

    /// A unique constraint was violated.
    public var isUniqueViolation: Bool { sqlState == "23505" }
    /// The text could not be read as the column's type (a bad UUID, say).
    public var isInvalidText: Bool { sqlState == "22P02" }
}

/// A value sent as a query parameter, in PostgreSQL's text format.
public protocol PostgresEncodable {
    var postgresText: String? { get }
}

extension String: PostgresEncodable { public var postgresText: String? { self } }
extension Int: PostgresEncodable { public var postgresText: String? { String(self) } }
extension Int64: PostgresEncodable { public var postgresText: String? { String(self) } }
extension UInt64: PostgresEncodable { public var postgresText: String? { String(self) } }
extension UInt32: PostgresEncodable { public var postgresText: String? { String(self) } }
extension Bool: PostgresEncodable { public var postgresText: String? { self ? "true" : "false" } }
extension Optional: PostgresEncodable where Wrapped: PostgresEncodable {
    public var postgresText: String? { self?.postgresText }
}

/// One row of a result, read by column name.
public struct PostgresRow: Sendable {
    let columns: [String: Int]
    let values: [String?]

    public subscript(_ column: String) -> String? {
        guard let index = columns[column] else { preconditionFailure("no column \(column) in result") }
        return values[index]
    }

    /// The value of the first column, for queries whose columns are not named by us.
    public var firstValue: String? { values.first ?? nil }

    public func string(_ column: String) -> String { self[column] ?? "" }
    public func int64(_ column: String) -> Int64 { self[column].flatMap { Int64($0) } ?? 0 }
    public func uint64(_ column: String) -> UInt64 { self[column].flatMap { UInt64($0) } ?? 0 }
    public func bool(_ column: String) -> Bool { self[column] == "t" }
}

/// One libpq connection. Its calls block; the pool runs them on a thread
/// pool and gives a connection to one caller at a time.
public final class PostgresConnection: @unchecked Sendable {
    private let connection: OpaquePointer
    /// Held by whoever runs statements on the connection through a
    /// `ConnectionHandle`: libpq runs one query at a time, and an actor that
    /// awaits a query can be entered again before it ends.
    let exclusive = Mutex<Void>(())
    /// Statements that succeeded on this connection so far: tells a failure
    /// before anything ran (safe to try elsewhere) from one after.
    public private(set) var completedStatements = 0

    /// Connects with a libpq connection string (key=value pairs or a URI).
    public init(_ connectionString: String) throws(PostgresError) {
        // Parsed first: libpq's own parse error, which connecting would report, quotes the text, a password among it.
        _ = try ConnectionString.settings(connectionString)
        guard let connection = PQconnectdb(connectionString) else {
            throw PostgresError(sqlState: nil, message: "libpq could not allocate a connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines
            PQfinish(connection)
            throw PostgresError(sqlState: nil, message: "cannot connect to PostgreSQL: \(message)")
        }
        self.connection = connection
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
    }

    deinit { PQfinish(connection) }

    /// Asks the server to cancel the query this connection is running, from
    /// any thread: the blocked call then returns with SQLSTATE 57014.
    public func cancelRunningQuery() {
        guard let cancel = PQgetCancel(connection) else { return }
        defer { PQfreeCancel(cancel) }
        var message = [CChar](repeating: 0, count: 256)
        _ = PQcancel(cancel, &message, Int32(message.count))
    }

    /// False once the server connection is lost.
    public var isHealthy: Bool { PQstatus(connection) == CONNECTION_OK }

    /// Not idle: a transaction was left open or failed.
    public var isInTransaction: Bool { PQtransactionStatus(connection) != PQTRANS_IDLE }

    /// The server's version, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    public var serverVersion: String {
        PQparameterStatus(connection, "server_version").map { String(cString: $0) } ?? ""
    }

    /// Runs one statement with parameters bound as `$1`, `$2`, … (never
    /// spliced into the SQL text) and returns its rows.
    @discardableResult
    public func query(_ sql: String, _ parameters: (any PostgresEncodable)?...) throws(PostgresError) -> [PostgresRow] {
        try query(sql, parameters: parameters)
    }

    @discardableResult
    public func query(_ sql: String, parameters: [(any PostgresEncodable)?]) throws(PostgresError) -> [PostgresRow] {
        let texts = parameters.map { $0?.postgresText }
        let cStrings = texts.map { $0.map { strdup($0)! } }
        defer { cStrings.forEach { free($0) } }
        var pointers = cStrings.map { UnsafePointer<CChar>($0) }
        let result = pointers.withUnsafeMutableBufferPointer { buffer in
            PQexecParams(connection, sql, Int32(buffer.count), nil, buffer.baseAddress, nil, nil, 0)
        }
        guard let result else {
            throw PostgresError(sqlState: nil, message: String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines)
        }
        defer { PQclear(result) }
        try check(result)
        completedStatements += 1
        return rows(of: result)
    }

    private func check(_ result: OpaquePointer) throws(PostgresError) {
        let status = PQresultStatus(result)
        guard status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK else { return }
        let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        let message = String(cString: PQresultErrorMessage(result)).trimmingTrailingNewlines
        let constraint = PQresultErrorField(result, Int32(UInt8(ascii: "n"))).map { String(cString: $0) }
        throw PostgresError(sqlState: state, message: message, constraint: constraint)
    }

    /// Waits up to `timeout` for notifications on the channels this
    /// connection listens to (`LISTEN`), and returns their payloads by
    /// channel; none when the time passed quietly. Throws once the
    /// connection is lost.
    public func notifications(waitingUpTo timeout: Duration,
                              interruptedBy interruption: NotificationWaitInterruption? = nil) throws(PostgresError) -> [(channel: String, payload: String)] {
        var received = takeNotifications()
        guard received.isEmpty else { return received }
        var sockets = [pollfd(fd: PQsocket(connection), events: Int16(POLLIN), revents: 0)]
        guard sockets[0].fd >= 0 else { throw PostgresError(sqlState: nil, message: "the connection to PostgreSQL is lost") }
        if let interruption { sockets.append(pollfd(fd: interruption.readable, events: Int16(POLLIN), revents: 0)) }
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        if poll(&sockets, nfds_t(sockets.count), milliseconds) > 0, sockets[0].revents != 0 {
            guard PQconsumeInput(connection) == 1 else {
                throw PostgresError(sqlState: nil, message: String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines)
            }
            received = takeNotifications()
        }
        return received
    }

    private func takeNotifications() -> [(channel: String, payload: String)] {
        var received: [(channel: String, payload: String)] = []
        while let notification = PQnotifies(connection) {
            received.append((String(cString: notification.pointee.relname), String(cString: notification.pointee.extra)))
            PQfreemem(notification)
        }
        return received
    }

    /// Runs a script of several statements without parameters (a migration)
    /// through the simple query protocol.
    public func execute(script sql: String) throws(PostgresError) {
        guard let result = PQexec(connection, sql) else {
            throw PostgresError(sqlState: nil, message: String(cString: PQerrorMessage(connection)).trimmingTrailingNewlines)
        }
        defer { PQclear(result) }
        try check(result)
    }

    /// Runs `body` in a transaction: committed when it returns, rolled back when it throws.
    public func transaction<T>(isolation: String = "READ COMMITTED", _ body: () throws -> T) throws -> T {
        try query("BEGIN ISOLATION LEVEL \(isolation)")
        do {
            let value = try body()
            try query("COMMIT")
            return value
        } catch {
            _ = try? query("ROLLBACK")
            throw error
        }
    }

    private func rows(of result: OpaquePointer) -> [PostgresRow] {
        let columnCount = PQnfields(result)
        var columns: [String: Int] = [:]
        for index in 0..<columnCount { columns[String(cString: PQfname(result, index))] = Int(index) }
        return (0..<PQntuples(result)).map { row in
            PostgresRow(columns: columns, values: (0..<columnCount).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            })
        }
    }
}

extension String {
    var trimmingTrailingNewlines: String {
        var copy = self
        while copy.last?.isNewline == true { copy.removeLast() }
        return copy
    }
}

/// libpq connection strings, parsed by libpq itself.
public enum ConnectionString {
    /// The settings a connection string (key=value pairs or a URI) gives.
    public static func settings(_ connectionString: String) throws(PostgresError) -> [(key: String, value: String)] {
        var error: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(connectionString, &error) else {
            // libpq's reason quotes the text it could not parse, which may be a password: it is not repeated.
            if let error { PQfreemem(error) }
            throw PostgresError(sqlState: nil, message: "connection string is not valid: libpq cannot parse it "
                                + "(its text is not repeated here, as it may hold a password)")
        }
        defer { PQconninfoFree(options) }
        var settings: [(key: String, value: String)] = []
        var option = options
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { settings.append((String(cString: keyword), String(cString: value))) }
            option += 1
        }
        return settings
    }

    /// Settings as a key=value connection string, every value quoted.
    public static func render(_ settings: [(key: String, value: String)]) -> String {
        settings.map { key, value in
            "\(key)='\(value.replacing("\\", with: "\\\\").replacing("'", with: "\\'"))'"
        }.joined(separator: " ")
    }

    /// The settings that are credentials: never shown, never on a command
    /// line. (`oauth_client_secret` is a setting of libpq 18 and later.)
    public static let secretKeys: Set = ["password", "sslpassword", "oauth_client_secret"]

    /// A connection string as it may be shown to a person: every setting
    /// libpq reads from it, as key=value pairs, with the credentials'
    /// values replaced, however they were spelled (keyword or URI form,
    /// quoted, escaped, percent-encoded, as `sslpassword`). One libpq cannot
    /// parse is not shown at all.
    public static func redacted(_ connectionString: String) -> String {
        guard let all = try? settings(connectionString) else { return "(a connection string libpq cannot parse)" }
        return render(all.map { secretKeys.contains($0.key) ? ($0.key, "REDACTED") : $0 })
    }

    /// The connection string with `defaults` added for the settings it does
    /// not give; one libpq cannot parse is returned as it is, to fail where
    /// it is used.
    public static func adding(_ defaults: KeyValuePairs<String, String>, to connectionString: String) -> String {
        guard let settings = try? settings(connectionString) else { return connectionString }
        let given = Set(settings.map(\.key))
        return render(settings + defaults.filter { !given.contains($0.key) }.map { ($0.key, $0.value) })
    }

    /// For a child process (pg_dump, pg_restore): the connection string
    /// without its password, and the password to hand over in PGPASSWORD,
    /// so that it never shows in a process listing.
    public static func withoutPassword(_ connectionString: String) throws(PostgresError) -> (connectionString: String, password: String?) {
        let all = try settings(connectionString)
        return (render(all.filter { $0.key != "password" }), all.first { $0.key == "password" }?.value)
    }

    /// Writes what backupd's own `PG*` environment variables would add to
    /// the catalog's connection string into it, then removes every `PG*`
    /// variable from the process, so that no libpq connection to an app
    /// database, and no `pg_dump`, can pick up the catalog's password, user
    /// or host. Call it once at start, before any other thread reads the
    /// environment.
    public static func absorbingEnvironment(_ connectionString: String) throws(PostgresError) -> String {
        var settings = try settings(connectionString)
        let given = Set(settings.map(\.key))
        if let defaults = PQconndefaults() {
            defer { PQconninfoFree(defaults) }
            var option = defaults
            while let keyword = option.pointee.keyword {
                let key = String(cString: keyword)
                if !given.contains(key), let variable = option.pointee.envvar, let value = getenv(variable), value.pointee != 0 {
                    settings.append((key, String(cString: value)))
                }
                option += 1
            }
        }
        var names: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if text.hasPrefix("PG"), let equals = text.firstIndex(of: "=") { names.append(String(text[..<equals])) }
            entry += 1
        }
        names.forEach { unsetenv($0) }
        return render(settings)
    }

    /// A quoted SQL identifier.
    public static func quoted(_ identifier: String) -> String {
        "\"" + identifier.replacing("\"", with: "\"\"") + "\""
    }
}

/// Ends a wait for notifications before its time: the task waiting is being
/// cancelled (a shutdown), and the thread it waits on should not sit out
/// the rest of the wait. Once interrupted, every later wait returns at once.
public final class NotificationWaitInterruption: Sendable {
    /// The end of a pipe that becomes readable on `interrupt`.
    let readable: Int32
    private let writable: Int32

    public init() throws(PostgresError) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            throw PostgresError(sqlState: nil, message: "cannot make a pipe: \(String(cString: strerror(errno)))")
        }
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        (readable, writable) = (ends[0], ends[1])
    }

    public func interrupt() {
        var byte: UInt8 = 1
        _ = write(writable, &byte, 1)  // a full pipe is already readable
    }

    deinit {
        close(readable)
        close(writable)
    }
}
