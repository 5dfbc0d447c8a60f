import BackupRules
import BackupPostgres
import BackupWire

extension Catalog {
    @discardableResult
    static func recordActivity(
        _ connection: PostgresConnection, _ namespace: String, _ environment: String,
        action: String, outcome: String, actor: String, snapshotID: String? = nil, detail: String = ""
    ) throws -> Int64 {
        try connection.query("""
            INSERT INTO activity (namespace, environment, action, outcome, actor, snapshot_id, detail)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
            """, namespace, environment, action, outcome, actor, snapshotID, detail)[0].int64("id")
    }

    /// An environment's (or a whole namespace's) activity, newest first.
    public func listActivity(namespace: String, environment: String, pageSize: UInt32, pageToken: String) async throws -> Page<Activity> {
        let (limit, after) = try pageBounds(size: pageSize, token: pageToken)
        return try await pool.withConnection { connection in
            let rows = try connection.query("""
                SELECT id, unix_ms(at) AS at_ms, namespace, environment, action, outcome, actor, snapshot_id, detail
                FROM activity
                WHERE namespace = $1 AND ($2 = '' OR environment = $2) AND ($3::bigint IS NULL OR id < $3)
                ORDER BY id DESC LIMIT $4
                """, namespace, environment, after, limit + 1)
            return Page(rows, limit: limit, cursor: "id") { row in
                Activity.with {
                    $0.atUnixMS = row.int64("at_ms"); $0.namespace = row.string("namespace")
                    $0.environment = row.string("environment"); $0.action = row.string("action")
                    $0.outcome = row.string("outcome"); $0.actor = row.string("actor")
                    $0.backupID = row.string("snapshot_id"); $0.detail = row.string("detail")
                }
            }
        }
    }
}
