import BackupRules
import BackupPostgres
import BackupWire
import Foundation
import NIOPosix

/// The catalog: every record of the service in one PostgreSQL database,
/// reached through a connection pool. Methods are grouped by record in the
/// `Catalog+*.swift` files; each keeps its writes in one transaction, so a
/// failure leaves no half-written rows.
public struct Catalog: Sendable {
    public let pool: ConnectionPool

    /// TCP settings of catalog connections the connection string does not
    /// set: a catalog that goes silent without a reset (a partition, a
    /// failover behind a proxy) fails its calls within about a minute,
    /// rather than when the kernel gives up, some fifteen minutes on.
    public static let connectionDefaults: KeyValuePairs = [
        "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3", "tcp_user_timeout": "60000",
    ]

    /// `observer` hears each lease of a catalog connection and how long it waited (metrics, tests).
    public init(connectionString: String, maximumConnections: Int = 8, threadPool: NIOThreadPool,
                validateAfterIdle: Duration = .seconds(10), observer: (any ConnectionPoolObserver)? = nil) {
        pool = ConnectionPool(connectionString: ConnectionString.adding(Self.connectionDefaults, to: connectionString),
                              maximumConnections: maximumConnections,
                              threadPool: threadPool, validateAfterIdle: validateAfterIdle, observer: observer)
    }

    /// Applies the migrations this catalog has not seen yet. Several
    /// processes may start at once: an advisory lock lets one migrate at a time.
    public func migrate() async throws {
        try await pool.withConnection { connection in
            try connection.query("SELECT pg_advisory_lock(\(AdvisoryLock.migrations))")
            defer { _ = try? connection.query("SELECT pg_advisory_unlock(\(AdvisoryLock.migrations))") }
            try Self.refuseForeignDatabase(connection)
            try connection.query("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
                """)
            let applied = Set(try connection.query("SELECT version FROM schema_migrations").map { Int($0.string("version")) })
            // A newer backupd's tables mean what this one does not know (its collection would take content it cannot see referenced).
            if let newest = applied.compactMap({ $0 }).max(), let known = Migrations.all.last?.version, newest > known {
                throw BackupError.failedPrecondition("the catalog was migrated by a newer backupd (to version \(newest); this one knows up to "
                                                     + "\(known)): run that version, or restore the catalog from before the upgrade")
            }
            for migration in Migrations.all where !applied.contains(migration.version) {
                try connection.transaction {
                    try connection.execute(script: migration.sql)
                    try connection.query("INSERT INTO schema_migrations (version) VALUES ($1)", migration.version)
                }
            }
        }
    }

    /// A database that holds tables but no `schema_migrations` is someone
    /// else's (an app's, say): backupd never creates its schema there.
    private static func refuseForeignDatabase(_ connection: PostgresConnection) throws {
        let row = try connection.query("""
            SELECT to_regclass('public.schema_migrations') IS NOT NULL AS ours, current_database() AS name,
                   (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)') AS relations
            """)[0]
        guard row.bool("ours") || row.int64("relations") == 0 else {
            throw CatalogError.foreignDatabase(
                "database \(row.string("name")) has \(row.int64("relations")) relations but no backupd schema_migrations table; "
                    + "it is not a backupd catalog, and backupd will not create its schema there")
        }
    }

    /// The PostgreSQL version of the catalog database.
    public func serverVersion() async throws -> String {
        try await pool.withConnection { $0.serverVersion }
    }
}

/// Why the catalog cannot be used at all.
public enum CatalogError: Error, CustomStringConvertible {
    case foreignDatabase(String)

    public var description: String {
        switch self {
        case let .foreignDatabase(message): message
        }
    }
}

/// Keys of the cluster-wide advisory locks the service takes.
enum AdvisoryLock {
    static let migrations = 7_400_001
    /// Held while a process claims a job, so per-namespace limits hold across processes.
    static let claims = 7_400_003
    /// Held while a download request counts and reserves the archive cache's bytes.
    static let archives = 7_400_004
    /// Held while an upload request counts and reserves the spool's bytes.
    static let uploads = 7_400_005
    /// Held (with the namespace's hash) while a verification request counts its namespace's verify jobs.
    static let verifications = 7_400_006
}

/// Turns catalog text into the API's enums.
extension WireEnum where Self: CustomStringConvertible {
    static func catalogValue(_ text: String) -> Self { Self(name: text) ?? .zero }
}

extension Array: PostgresEncodable where Element == String {
    /// A PostgreSQL array literal; every element quoted and escaped.
    public var postgresText: String? {
        var literal: [UInt8] = [UInt8(ascii: "{")]
        literal.reserveCapacity(reduce(2) { $0 + $1.utf8.count + 3 })
        for (index, element) in enumerated() {
            if index > 0 { literal.append(UInt8(ascii: ",")) }
            literal.append(UInt8(ascii: "\""))
            for byte in element.utf8 {
                if byte == UInt8(ascii: "\\") || byte == UInt8(ascii: "\"") { literal.append(UInt8(ascii: "\\")) }
                literal.append(byte)
            }
            literal.append(UInt8(ascii: "\""))
        }
        literal.append(UInt8(ascii: "}"))
        return String(decoding: literal, as: UTF8.self)
    }
}

/// A page of results and where the next one starts.
public struct Page<Item: Sendable>: Sendable {
    public private(set) var items: [Item]
    /// Each item's page token: where a page that ends with it continues.
    private var cursors: [String]
    public private(set) var nextPageToken: String

    /// A page of at most `limit` items from rows fetched with one more than
    /// `limit`, so that a next page is announced only when there is one.
    init(_ rows: [PostgresRow], limit: Int, cursor column: String, item: (PostgresRow) -> Item) {
        items = rows.prefix(limit).map(item)
        cursors = rows.prefix(limit).map { $0.string(column) }
        nextPageToken = rows.count > limit ? cursors[limit - 1] : ""
    }

    /// The page cut to its first `count` items, continuing after them:
    /// for a response that must fit in one frame.
    public func prefix(_ count: Int) -> Page {
        guard count < items.count, count > 0 else { return self }
        var page = self
        page.items = Array(items.prefix(count))
        page.cursors = Array(cursors.prefix(count))
        page.nextPageToken = cursors[count - 1]
        return page
    }
}

/// Checks a page size and an opaque page token: the cursor of the last item
/// seen (a sequence number unless `isCursor` says otherwise).
func pageBounds(size: UInt32, token: String,
                isCursor: (String) -> Bool = { Int64($0).map { $0 > 0 } ?? false }) throws(BackupError) -> (limit: Int, after: String?) {
    guard size <= 500 else { throw .invalidArgument("page_size \(size) is above the maximum of 500") }
    if token.isEmpty { return (size == 0 ? 50 : Int(size), nil) }
    guard isCursor(token) else { throw .invalidArgument("page_token \"\(token)\" is not one this server gave") }
    return (size == 0 ? 50 : Int(size), token)
}

/// Parses a UUID given by a caller, naming what it was meant to identify.
func parseID(_ text: String, _ what: String) throws(BackupError) -> String {
    guard let uuid = UUID(uuidString: text) else { throw .invalidArgument("\(what) \"\(text)\" is not a UUID") }
    return uuid.uuidString.lowercased()
}
