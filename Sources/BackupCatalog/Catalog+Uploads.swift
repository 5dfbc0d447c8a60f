import BackupCore
import BackupPostgres
import BackupWire
import Foundation

extension Catalog {
    static let uploadColumns = """
        u.id, e.namespace, e.name AS environment, u.filename, u.comment, u.size, u.sha256, u.received, u.state,
        u.job_id, u.snapshot_id, u.error, unix_ms(u.created_at) AS created_ms, unix_ms(u.expires_at) AS expires_ms
        """

    static func upload(_ row: PostgresRow) -> Upload {
        .with {
            $0.id = row.string("id"); $0.namespace = row.string("namespace"); $0.environment = row.string("environment")
            $0.filename = row.string("filename"); $0.comment = row.string("comment"); $0.sizeBytes = row.uint64("size")
            $0.sha256 = row.string("sha256"); $0.bytesReceived = row.uint64("received"); $0.state = .catalogValue(row.string("state"))
            $0.jobID = row.string("job_id"); $0.backupID = row.string("snapshot_id"); $0.error = row.string("error")
            $0.createdUnixMS = row.int64("created_ms"); $0.expiresUnixMS = row.int64("expires_ms")
        }
    }

    static func loadUpload(_ connection: PostgresConnection, _ id: String) throws -> Upload {
        guard let row = try connection.query("""
            SELECT \(uploadColumns) FROM uploads u JOIN environments e ON e.id = u.environment_id WHERE u.id = $1
            """, id).first else {
            throw BackupError.notFound("upload \(id) does not exist")
        }
        return upload(row)
    }

    public func upload(id: String) async throws -> Upload {
        let id = try parseID(id, "upload id")
        return try await pool.withConnection(idempotent: true) { try Self.loadUpload($0, id) }
    }

    /// Records an upload about to be received into an environment: RECEIVING,
    /// nothing received, abandoned unless a chunk arrives within `lifetime`.
    /// Its announced size is reserved in the spool: refused with
    /// RESOURCE_EXHAUSTED past `spoolBytes` for the uploads of every process
    /// on this catalog, or `namespaceShare` of it for one namespace's.
    /// `prepare` checks the disk (given the size and the others' reservations)
    /// and makes the spool file, inside the transaction: if it fails, nothing
    /// is recorded.
    public func startUpload(namespace: String, environment: String, filename: String, comment: String, size: UInt64,
                            sha256: ContentHash, actor: String, lifetime: Duration, spoolBytes: UInt64, namespaceShare: Double,
                            prepare: @escaping @Sendable (_ id: String, _ others: UInt64) throws -> Void) async throws -> Upload {
        let id = UUID().uuidString.lowercased()
        return try await pool.callTransaction { connection in
            let environmentID = try Self.environmentID(connection, namespace, environment)
            try connection.query("SELECT pg_advisory_xact_lock(\(AdvisoryLock.uploads))")
            let used = try connection.query("""
                SELECT coalesce(sum(u.size), 0) AS total, coalesce(sum(u.size) FILTER (WHERE e.namespace = $1), 0) AS namespace,
                       count(*) FILTER (WHERE e.namespace = $1) AS uploads, coalesce(sum(u.size - u.received), 0) AS to_come
                FROM uploads u JOIN environments e ON e.id = u.environment_id WHERE u.state IN ('receiving', 'validating')
                """, namespace)[0]
            guard used.int64("uploads") < Self.unfinishedUploadsPerNamespace else {
                throw BackupError.resourceExhausted("namespace \(namespace) has \(used.int64("uploads")) unfinished uploads, the most it "
                                                    + "may have; finish or abandon some first")
            }
            let namespaceBytes = UInt64(Double(spoolBytes) * namespaceShare)
            guard used.uint64("namespace") + size <= namespaceBytes else {
                throw BackupError.resourceExhausted(
                    "namespace \(namespace)'s unfinished uploads reserve \(used.uint64("namespace")) of the \(namespaceBytes) bytes "
                        + "it may use, and this one announces \(size); finish or abandon earlier uploads first")
            }
            guard used.uint64("total") + size <= spoolBytes else {
                throw BackupError.resourceExhausted("the upload spool is full, and this upload announces \(size) bytes; try again later")
            }
            try connection.query("""
                INSERT INTO uploads (id, environment_id, filename, comment, size, sha256, state, actor, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, 'receiving', $7, now() + make_interval(secs => $8))
                """, id, environmentID, filename, comment, size, sha256.hex, actor, lifetime.components.seconds)
            try Self.recordActivity(connection, namespace, environment, action: "upload", outcome: "STARTED", actor: actor,
                                    detail: "\(filename.isEmpty ? "an archive" : filename) of \(size) bytes")
            try prepare(id, used.uint64("to_come"))
            return try Self.loadUpload(connection, id)
        }
    }

    /// Makes `writer` (one call) the only one that writes a receiving
    /// upload's chunks, in any process sharing the catalog, for a lease of
    /// `seconds` that each chunk renews; returns the bytes received so far,
    /// or nil while another call's lease runs.
    public func claimUpload(id: String, writer: String, seconds: Int) async throws -> UInt64? {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                UPDATE uploads SET writer = $2, writer_until = now() + make_interval(secs => $3)
                WHERE id = $1 AND state = 'receiving' AND (writer IS NULL OR writer = $2 OR writer_until < now())
                RETURNING received
                """, id, writer, seconds).first?.uint64("received")
        }
    }

    /// Before a chunk is written at `offset`: renews the lease and says
    /// whether `writer` still holds it with nothing received past `offset`.
    public func renewUploadLease(id: String, writer: String, offset: UInt64, seconds: Int) async throws -> Bool {
        try await pool.withConnection(idempotent: true) { connection in
            !(try connection.query("""
                UPDATE uploads SET writer_until = now() + make_interval(secs => $4)
                WHERE id = $1 AND writer = $2 AND received = $3 AND state = 'receiving' RETURNING id
                """, id, writer, offset, seconds).isEmpty)
        }
    }

    /// How many uploads one namespace may have unfinished at once.
    static let unfinishedUploadsPerNamespace: Int64 = 64

    /// Moves a receiving upload's count of bytes from `from` to `to`, and its
    /// abandonment `lifetime` from now; false unless `writer` still holds it
    /// with that count.
    public func recordReceived(uploadID: String, writer: String, from: UInt64, to: UInt64, lifetime: Duration) async throws -> Bool {
        try await pool.withConnection(idempotent: true) { connection in
            !(try connection.query("""
                UPDATE uploads SET received = $3, expires_at = now() + make_interval(secs => $4)
                WHERE id = $1 AND received = $2 AND state = 'receiving' AND writer = $5 RETURNING id
                """, uploadID, from, to, lifetime.components.seconds, writer).isEmpty)
        }
    }

    /// Ends `writer`'s lease, if it still holds one.
    public func releaseUpload(id: String, writer: String) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE uploads SET writer = NULL, writer_until = NULL WHERE id = $1 AND writer = $2", id, writer)
        }
    }

    /// Ends a receiving upload as FAILED with its reason, logging it.
    public func failUpload(id: String, reason: String) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            guard let row = try connection.query("""
                UPDATE uploads u SET state = 'failed', error = $2 FROM environments e
                WHERE u.id = $1 AND u.state = 'receiving' AND e.id = u.environment_id
                RETURNING e.namespace, e.name, u.actor
                """, id, reason).first else { return }
            try Self.recordActivity(connection, row.string("namespace"), row.string("name"), action: "upload", outcome: "FAILED",
                                    actor: row.string("actor"), detail: reason)
        }
    }

    /// Ends the uploads that received nothing until their expiry as EXPIRED,
    /// logging each, and says of the `listed` ids (the spool's files) which
    /// are uploads still receiving, whose files stay, and which are uploads
    /// at all (a file of none may belong to a start not yet committed).
    public func expireUploads(listed: [String]) async throws -> (receiving: Set<String>, known: Set<String>) {
        try await pool.callTransaction(idempotent: true) { connection in
            let expired = try connection.query("""
                UPDATE uploads u SET state = 'expired', error = 'abandoned: nothing was received before it expired'
                FROM environments e
                WHERE u.state = 'receiving' AND u.expires_at < now() AND e.id = u.environment_id
                RETURNING e.namespace, e.name, u.actor, u.id
                """)
            for row in expired {
                try Self.recordActivity(connection, row.string("namespace"), row.string("name"), action: "upload", outcome: "EXPIRED",
                                        actor: row.string("actor"), detail: "upload \(row.string("id")) was abandoned")
            }
            let rows = try connection.query("SELECT id::text, state FROM uploads WHERE id::text = ANY($1::text[])", listed)
            return (Set(rows.filter { $0.string("state") == "receiving" }.map { $0.string("id") }), Set(rows.map { $0.string("id") }))
        }
    }
}
