import BackupRules
import BackupPostgres
import BackupWire

/// The default file-reference query fits a Mendix app: the storage UUIDs of
/// file documents that have contents, minus those deleted after download.
public let mendixFileQuery = """
    SELECT "__uuid__" FROM "system$filedocument" WHERE "hascontents" AND NOT "deleteafterdownload"
    """

extension Catalog {
    static let environmentColumns = """
        e.id, e.namespace, e.name, e.app, e.database_url, e.file_store_path, e.file_query, e.package_version,
        e.state, unix_ms(e.created_at) AS created_ms,
        (SELECT count(*) FROM snapshots s WHERE s.environment_id = e.id) AS backup_count
        """

    static func environment(_ row: PostgresRow) -> Environment {
        .with {
            $0.namespace = row.string("namespace"); $0.name = row.string("name"); $0.app = row.string("app")
            $0.databaseURL = row.string("database_url"); $0.fileStorePath = row.string("file_store_path")
            $0.fileQuery = row.string("file_query"); $0.packageVersion = row.string("package_version")
            $0.state = .catalogValue(row.string("state")); $0.createdUnixMS = row.int64("created_ms")
            $0.backupCount = UInt32(row.int64("backup_count"))
        }
    }

    public func registerEnvironment(_ request: RegisterEnvironmentRequest) async throws -> Environment {
        try validateName(request.namespace, "namespace")
        try validateName(request.name, "environment name")
        guard !request.app.isEmpty else { throw BackupError.invalidArgument("app is required") }
        guard !request.databaseURL.isEmpty else { throw BackupError.invalidArgument("database_url is required") }
        let state: EnvironmentState = request.state == .unspecified ? .running : request.state
        let fileQuery = request.fileQuery.isEmpty ? mendixFileQuery : request.fileQuery
        return try await pool.callTransaction { connection in
            try connection.query("INSERT INTO namespaces (name) VALUES ($1) ON CONFLICT DO NOTHING", request.namespace)
            do {
                try connection.query("""
                    INSERT INTO environments (namespace, name, app, database_url, file_store_path, file_query, package_version, state)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    """, request.namespace, request.name, request.app, request.databaseURL, request.fileStorePath,
                    fileQuery, request.packageVersion, state.description)
            } catch let error as PostgresError where error.isUniqueViolation {
                throw BackupError.alreadyExists("environment \(request.namespace)/\(request.name) already exists")
            }
            return try Self.loadEnvironment(connection, request.namespace, request.name)
        }
    }

    /// A namespace's environments by name, a page at a time.
    public func listEnvironments(namespace: String, pageSize: UInt32 = 0, pageToken: String = "") async throws -> Page<Environment> {
        let (limit, after) = try pageBounds(size: pageSize, token: pageToken) { (try? validateName($0, "")) != nil }
        return try await pool.withConnection { connection in
            let rows = try connection.query("""
                SELECT \(Self.environmentColumns) FROM environments e
                WHERE e.namespace = $1 AND ($2::text IS NULL OR e.name > $2) ORDER BY e.name LIMIT $3
                """, namespace, after, limit + 1)
            return Page(rows, limit: limit, cursor: "name", item: Self.environment)
        }
    }

    public func environment(namespace: String, name: String) async throws -> Environment {
        try await pool.withConnection { try Self.loadEnvironment($0, namespace, name) }
    }

    public func updateEnvironment(_ request: UpdateEnvironmentRequest) async throws -> Environment {
        try await pool.callTransaction { connection in
            let id = try Self.environmentID(connection, request.namespace, request.name)
            try connection.query("""
                UPDATE environments SET
                    app = COALESCE(NULLIF($2, ''), app),
                    database_url = COALESCE(NULLIF($3, ''), database_url),
                    file_store_path = COALESCE(NULLIF($4, ''), file_store_path),
                    file_query = COALESCE(NULLIF($5, ''), file_query),
                    package_version = COALESCE(NULLIF($6, ''), package_version)
                WHERE id = $1
                """, id, request.app, request.databaseURL, request.fileStorePath, request.fileQuery, request.packageVersion)
            return try Self.loadEnvironment(connection, request.namespace, request.name)
        }
    }

    public func setEnvironmentState(namespace: String, name: String, state: EnvironmentState, actor: String) async throws -> Environment {
        guard state != .unspecified else { throw BackupError.invalidArgument("state must be running or stopped") }
        return try await pool.callTransaction { connection in
            let id = try Self.environmentID(connection, namespace, name, lock: true)
            if state == .running, let restore = try connection.query(
                "SELECT id FROM jobs WHERE environment_id = $1 AND kind = 'restore' AND status IN \(JobStatus.active.sql)", id).first {
                throw BackupError.failedPrecondition(
                    "environment \(namespace)/\(name) is being restored by job \(restore.string("id")); it stays stopped until the restore ends")
            }
            try connection.query("UPDATE environments SET state = $2 WHERE id = $1", id, state.description)
            try Self.recordActivity(connection, namespace, name, action: state == .running ? "start" : "stop",
                                    outcome: "FINISHED", actor: actor)
            return try Self.loadEnvironment(connection, namespace, name)
        }
    }

    /// Deletes an environment. Refused while a job runs there, and while it
    /// has backups unless `force`, which deletes them too (their blobs go at
    /// the next garbage collection).
    public func deleteEnvironment(namespace: String, name: String, force: Bool, actor: String) async throws -> UInt32 {
        try await pool.callTransaction { connection in
            let id = try Self.environmentID(connection, namespace, name, lock: true)
            if let job = try connection.query("SELECT id, kind FROM jobs WHERE environment_id = $1 AND status IN \(JobStatus.active.sql)", id).first {
                throw BackupError.failedPrecondition("environment \(namespace)/\(name) is running \(job.string("kind")) job \(job.string("id"))")
            }
            // Locked first, so no restore of these backups can be queued until this ends.
            let count = try connection.query("SELECT id FROM snapshots WHERE environment_id = $1 FOR UPDATE", id).count
            try Self.refuseWhileUsed(connection, "a backup of environment \(namespace)/\(name)", usedBy: "s.environment_id = $1::bigint", String(id))
            if count > 0 && !force {
                throw BackupError.failedPrecondition("environment \(namespace)/\(name) has \(count) backups; delete them first or force")
            }
            try connection.query("DELETE FROM snapshots WHERE environment_id = $1", id)
            try connection.query("DELETE FROM jobs WHERE environment_id = $1", id)
            try connection.query("DELETE FROM environments WHERE id = $1", id)
            try Self.recordActivity(connection, namespace, name, action: "delete-environment", outcome: "FINISHED",
                                    actor: actor, detail: "\(count) backups deleted")
            return UInt32(count)
        }
    }

    /// The file stores of every environment but one, named `namespace/name`.
    public func fileStores(excludingNamespace namespace: String, name: String) async throws -> [(name: String, path: String)] {
        try await pool.withConnection { connection in
            try connection.query("""
                SELECT namespace || '/' || name AS name, file_store_path FROM environments WHERE NOT (namespace = $1 AND name = $2)
                """, namespace, name).map { (name: $0.string("name"), path: $0.string("file_store_path")) }
        }
    }

    static func loadEnvironment(_ connection: PostgresConnection, _ namespace: String, _ name: String) throws -> Environment {
        guard let row = try connection.query(
            "SELECT \(environmentColumns) FROM environments e WHERE e.namespace = $1 AND e.name = $2", namespace, name
        ).first else {
            throw BackupError.notFound("environment \(namespace)/\(name) does not exist")
        }
        return environment(row)
    }

    static func environmentID(_ connection: PostgresConnection, _ namespace: String, _ name: String, lock: Bool = false) throws -> Int64 {
        guard let row = try connection.query(
            "SELECT id FROM environments WHERE namespace = $1 AND name = $2" + (lock ? " FOR UPDATE" : ""), namespace, name
        ).first else {
            throw BackupError.notFound("environment \(namespace)/\(name) does not exist")
        }
        return row.int64("id")
    }
}

/// Namespace and environment names: 1 to 63 lowercase letters, digits and
/// '-', starting with a letter or digit.
public func validateName(_ name: String, _ what: String) throws(BackupError) {
    let bytes = Array(name.utf8)
    let valid = (1...63).contains(bytes.count) && bytes.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == 45 }
        && bytes.first != 45
    guard valid else {
        // The message goes back to whoever sent the name: cut short, and with what is not plain text shown as `?`.
        throw .invalidArgument("\(what) \(quotedPrintable(name, longest: 64)) (\(bytes.count) bytes) must be 1 to 63 lowercase letters, "
                               + "digits or '-', not starting with '-'")
    }
}
