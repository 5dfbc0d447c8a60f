import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import NIOPosix

/// How backupd may reach app databases, set by its operator.
public struct AppDatabasePolicy: Sendable {
    /// Hosts (names or addresses, as written in database URLs) that app
    /// databases may be on; empty allows any TCP host.
    public var allowedHosts: [String] = []
    /// Whether a database URL may name a Unix-domain socket, where the
    /// server may trust backupd's own OS user (peer authentication).
    public var allowSocketHosts = false
    public var connectTimeoutSeconds = 10
    /// `statement_timeout` and `lock_timeout` of every app session.
    public var statementTimeout = "5min"
    public var lockTimeout = "30s"
    /// How long the file query of one backup may run, and how many rows it may return.
    public var fileQueryTimeout = "60s"
    public var maximumFilesPerBackup = 500_000
    /// How long a restore keeps trying to rename or drop a database that is
    /// in use (autovacuum, a session just ended) before it fails naming who uses it.
    public var takeoverTimeout: Duration = .seconds(30)

    public init() {}
}

/// A PostgreSQL cluster and database, as told by the server itself.
public struct DatabaseIdentity: Sendable, Equatable {
    public let systemIdentifier: String
    public let database: String

    static let query = "SELECT (SELECT system_identifier FROM pg_control_system())::text AS system, current_database() AS database"

    init(systemIdentifier: String, database: String) {
        self.systemIdentifier = systemIdentifier
        self.database = database
    }

    /// The identity of the database a connection is on.
    public static func of(_ connection: PostgresConnection) throws -> DatabaseIdentity {
        let row = try connection.query(query)[0]
        return DatabaseIdentity(systemIdentifier: row.string("system"), database: row.string("database"))
    }
}

/// Connections to app databases. Only what the database URL says is used:
/// backupd's own PostgreSQL environment (password, password file, client
/// certificates, service file) never reaches an app's server, every session
/// has timeouts, and no URL reaches backupd's catalog.
struct AppDatabases: Sendable {
    let policy: AppDatabasePolicy
    let catalog: DatabaseIdentity

    /// Settings no URL may give: the first two read files of backupd's
    /// choosing; an `sslpassword` could reach pg_dump only on its command
    /// line, which every local user can list.
    private static let refusedSettings = ["service", "passfile", "sslpassword"]
    /// A path that never exists: libpq finds no password file or client certificate there.
    private static let nowhere = "/nonexistent/backupd-gives-no-credentials"

    /// The connection string backupd uses for a database URL (on `database`
    /// of the same server, when given), or why the URL is refused.
    func connectionString(_ url: String, database: String? = nil) throws(BackupError) -> String {
        var settings: [(key: String, value: String)]
        do {
            settings = try ConnectionString.settings(url)
        } catch {
            throw .invalidArgument("database_url is not a libpq connection string: \(error.message)")
        }
        if let refused = settings.first(where: { Self.refusedSettings.contains($0.key) }) {
            throw .invalidArgument(refused.key == "sslpassword"
                ? "database_url may not set sslpassword: pg_dump could be given it only on its command line, which any local user can read"
                : "database_url may not set \(refused.key): it would read a file of backupd's")
        }
        let hosts = settings.filter { $0.key == "host" || $0.key == "hostaddr" }
            .flatMap { $0.value.split(separator: ",").map(String.init) }
        guard !hosts.isEmpty, hosts.allSatisfy({ !$0.isEmpty }) else {
            throw .invalidArgument("database_url must name the app database's host (host=…)")
        }
        if !policy.allowSocketHosts, hosts.contains(where: { $0.hasPrefix("/") || $0.hasPrefix("@") }) {
            throw .permissionDenied("database_url names a Unix-domain socket; backupd reaches app databases over TCP only "
                                    + "(start it with --allow-socket-app-databases to allow sockets)")
        }
        if !policy.allowedHosts.isEmpty,
           let host = hosts.first(where: { host in !policy.allowedHosts.contains { $0.lowercased() == host.lowercased() } }) {
            throw .permissionDenied("database_url host \(host) is not among the allowed app database hosts (--app-database-hosts)")
        }
        if let database {
            settings.removeAll { $0.key == "dbname" }
            settings.append(("dbname", database))
        }
        // Every session ends: its timeouts are backupd's, whatever the URL says.
        let enforced: [(key: String, value: String)] = [
            ("connect_timeout", "\(policy.connectTimeoutSeconds)"), ("keepalives", "1"), ("keepalives_idle", "30"),
            ("keepalives_interval", "10"), ("keepalives_count", "3"),
        ]
        settings.removeAll { setting in enforced.contains { $0.key == setting.key } }
        settings += enforced
        let given = Set(settings.map(\.key))
        let defaults: [(key: String, value: String)] = [
            ("passfile", Self.nowhere), ("sslcert", Self.nowhere), ("sslkey", Self.nowhere), ("gssencmode", "disable"),
            ("application_name", "backupd"),
        ]
        settings += defaults.filter { !given.contains($0.key) }
        let options = settings.first { $0.key == "options" }?.value ?? ""
        settings.removeAll { $0.key == "options" }
        settings.append(("options", "\(options) -c statement_timeout=\(policy.statementTimeout) -c lock_timeout=\(policy.lockTimeout)"))
        return ConnectionString.render(settings)
    }

    /// Connects to an environment's database, or to `database` on the same
    /// server, and makes sure it is not backupd's catalog. Blocks: call it on
    /// the thread pool.
    func connect(_ environment: Environment, database: String? = nil) throws -> PostgresConnection {
        let connection: PostgresConnection
        do {
            connection = try Self.pinned(PostgresConnection(try connectionString(environment.databaseURL, database: database)))
        } catch let error as PostgresError {
            throw JobFailure(description: "database server of \(environment.namespace)/\(environment.name): \(error.message)")
        }
        try refuseCatalog(on: connection)
        return connection
    }

    /// A session whose names resolve in `pg_catalog` first and nowhere the
    /// app's role can create objects: the role may set its own search path
    /// (`ALTER ROLE ... SET search_path`), and a `current_database()` or
    /// `pg_database` of its own schema would answer backupd's questions
    /// (which database to swap, which oid) with whatever it likes.
    static func pinned(_ connection: PostgresConnection) throws(PostgresError) -> PostgresConnection {
        try connection.query("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false)")
        return connection
    }

    /// Runs the environment's own SQL (the file query) with the app's search
    /// path, the one its sessions start with, and backupd's again after it.
    static func withAppSearchPath<T>(_ connection: PostgresConnection, _ body: () throws -> T) throws -> T {
        try connection.query("SET search_path TO DEFAULT")
        defer { _ = try? pinned(connection) }
        return try body()
    }

    /// A session of a restore's staging database (the app's dump restored),
    /// pinned like every app session.
    func stagingSession(_ connectionString: String, threadPool: NIOThreadPool) async throws -> ConnectionHandle {
        ConnectionHandle(try await threadPool.runIfActive { try Self.pinned(PostgresConnection(connectionString)) }, threadPool: threadPool)
    }

    /// An app session for a job: connected on the thread pool, checked, and
    /// run through `runCancellable`, so a cancelled job cancels its query.
    func session(_ environment: Environment, database: String? = nil, threadPool: NIOThreadPool) async throws -> ConnectionHandle {
        ConnectionHandle(try await threadPool.runIfActive { try connect(environment, database: database) }, threadPool: threadPool)
    }

    /// Runs `change`, a rename or drop of `names` on the server `connection`
    /// is on, once nobody else is on them. Only the sessions this role may
    /// end are ended: client sessions of roles it is a member of (never a
    /// superuser's unless it is one). Everything else, autovacuum above all,
    /// PostgreSQL itself asks to leave when a database is renamed or dropped,
    /// and waits a few seconds for; while it still answers "in use" (55006),
    /// `change` is tried again with back-off for `takeoverTimeout`. Then the
    /// restore fails FAILED_PRECONDITION naming the sessions that hold the
    /// databases. Blocks: runs on the thread pool, inside a cancellable session.
    func takingOver(_ names: [String], on connection: PostgresConnection, _ change: () throws -> Void) throws {
        let deadline = ContinuousClock.now + policy.takeoverTimeout
        var pause = Duration.milliseconds(100)
        while true {
            let sessions = try connection.query("""
                SELECT a.pid FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
                WHERE a.datname IN (\(Self.placeholders(names.count))) AND a.pid <> pg_backend_pid()
                  AND a.backend_type = 'client backend' AND pg_has_role(a.usesysid, 'MEMBER')
                  AND (NOT r.rolsuper OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
                """, parameters: names)
            for session in sessions {
                // A session may end, or turn out not to be ours to end, between the listing and this.
                _ = try? connection.query("SELECT pg_terminate_backend($1::int, 5000)", session.string("pid"))
            }
            do {
                return try change()
            } catch let error as PostgresError where error.sqlState == "55006" {
                guard ContinuousClock.now + pause < deadline else {
                    throw BackupError.failedPrecondition(try Self.describeHolders(of: names, on: connection))
                }
                usleep(UInt32(pause / .microseconds(1)))
                pause = min(pause * 2, .seconds(2))
            }
        }
    }

    /// `$1, $2, …` for `count` parameters.
    private static func placeholders(_ count: Int) -> String {
        (1...count).map { "$\($0)" }.joined(separator: ", ")
    }

    /// Who is on `names` that backupd may not end, as the restore's failure says it.
    private static func describeHolders(of names: [String], on connection: PostgresConnection) throws -> String {
        let holders = try connection.query("""
            SELECT a.pid, a.datname, coalesce(a.usename, '') AS role, a.application_name, a.backend_type
            FROM pg_stat_activity a WHERE a.datname IN (\(placeholders(names.count))) AND a.pid <> pg_backend_pid()
            ORDER BY a.pid LIMIT 5
            """, parameters: names)
        let described = holders.map { row in
            let role = row.string("role").isEmpty ? row.string("backend_type") : "role \(row.string("role"))"
            let application = row.string("application_name").isEmpty ? "" : ", application \"\(row.string("application_name"))\""
            return "pid \(row.string("pid")) on \(row.string("datname")) (\(role)\(application))"
        }
        return "database \(names[0]) is in use by a session backupd may not end: "
            + (described.isEmpty ? "one that has since ended" : described.joined(separator: "; "))
            + "; end it, or ask its owner to, and restore again. The target is unchanged"
    }

    /// Refuses a connection to the catalog's database, or a database name
    /// that is the catalog's on the catalog's cluster.
    func refuseCatalog(on connection: PostgresConnection, named name: String? = nil) throws {
        let identity: DatabaseIdentity
        do {
            identity = try DatabaseIdentity.of(connection)
        } catch let error as PostgresError {
            throw BackupError.failedPrecondition("cannot tell whether the app database is backupd's catalog: \(error.message)")
        }
        guard identity.systemIdentifier == catalog.systemIdentifier, (name ?? identity.database) == catalog.database else { return }
        throw BackupError.permissionDenied("database_url reaches backupd's own catalog database; an app database may never be the catalog")
    }
}
