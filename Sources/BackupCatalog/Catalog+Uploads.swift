import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// An upload the catalog has recorded before its spool file exists.
public struct UploadReservation: Sendable {
    public let upload: Upload
    /// What the other unfinished uploads are still to receive: the disk must hold it beside this one.
    public let othersToCome: UInt64
    let activityID: Int64
}

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

    /// An upload by id; `lock` locks its row until the transaction ends.
    static func loadUpload(_ connection: PostgresConnection, _ id: String, lock: Bool = false) throws -> Upload {
        guard let row = try connection.query("""
            SELECT \(uploadColumns) FROM uploads u JOIN environments e ON e.id = u.environment_id WHERE u.id = $1
            """ + (lock ? " FOR UPDATE OF u" : ""), id).first else {
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
    /// on this catalog, or, for one namespace's, past `namespaceShare` of the
    /// spool's capacity: the least of `spoolBytes` and what its disk can hold
    /// for uploads (`diskBytes`, free beyond the disk's reserve, plus what
    /// unfinished uploads hold there already), so one namespace can never
    /// reserve the whole disk. The upload is a reservation until the caller
    /// has made its spool file (checking the disk beside what the others
    /// are still to receive); if that fails, `withdrawUpload` takes it back.
    public func startUpload(namespace: String, environment: String, filename: String, comment: String, size: UInt64,
                            sha256: ContentHash, actor: String, lifetime: Duration, spoolBytes: UInt64, diskBytes: UInt64,
                            namespaceShare: NamespaceShare) async throws -> UploadReservation {
        let id = UUID().uuidString.lowercased()
        return try await pool.callTransaction { connection in
            let environmentID = try Self.environmentID(connection, namespace, environment)
            try connection.query("SELECT pg_advisory_xact_lock(\(AdvisoryLock.uploads))")
            let used = try connection.query("""
                SELECT coalesce(sum(u.size), 0) AS total, coalesce(sum(u.size) FILTER (WHERE e.namespace = $1), 0) AS namespace,
                       count(*) FILTER (WHERE e.namespace = $1) AS uploads, coalesce(sum(u.size - u.received), 0) AS to_come,
                       coalesce(sum(u.received), 0) AS received
                FROM uploads u JOIN environments e ON e.id = u.environment_id WHERE u.state IN \(UploadState.unfinished.sql)
                """, namespace)[0]
            guard used.int64("uploads") < Self.unfinishedUploadsPerNamespace else {
                throw BackupError.resourceExhausted("namespace \(namespace) has \(used.int64("uploads")) unfinished uploads, the most it "
                                                    + "may have; finish or abandon some first")
            }
            let capacity = min(spoolBytes, diskBytes &+ used.uint64("received"))
            let namespaceBytes = namespaceShare.of(capacity)
            // Where the disk itself has no room for this upload, `prepare` says so.
            let diskHasRoom = used.uint64("to_come") &+ size <= diskBytes
            guard used.uint64("namespace") + size <= namespaceBytes || !diskHasRoom else {
                throw BackupError.resourceExhausted(
                    "namespace \(namespace)'s unfinished uploads reserve \(used.uint64("namespace")) of the \(namespaceBytes) bytes "
                        + "it may use (its share of the \(capacity) the upload spool can hold now), and this one announces \(size); "
                        + "finish or abandon earlier uploads first")
            }
            guard used.uint64("total") + size <= spoolBytes else {
                throw BackupError.resourceExhausted("the upload spool is full, and this upload announces \(size) bytes; try again later")
            }
            try connection.query("""
                INSERT INTO uploads (id, environment_id, filename, comment, size, sha256, state, actor, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, '\(UploadState.receiving)', $7, now() + make_interval(secs => $8))
                """, id, environmentID, filename, comment, size, sha256.hex, actor, lifetime.components.seconds)
            let activityID = try Self.recordActivity(connection, namespace, environment, action: "upload", outcome: "STARTED",
                                                     actor: actor, detail: "\(filename.isEmpty ? "an archive" : filename) of \(size) bytes")
            return UploadReservation(upload: try Self.loadUpload(connection, id), othersToCome: used.uint64("to_come"), activityID: activityID)
        }
    }

    /// Takes back an upload whose spool file could not be made, with its
    /// activity entry: as if it had never been asked for.
    public func withdrawUpload(_ reservation: UploadReservation) async throws {
        try await pool.transaction(idempotent: true) { connection in
            try connection.query("DELETE FROM uploads WHERE id = $1 AND received = 0", reservation.upload.id)
            try connection.query("DELETE FROM activity WHERE id = $1", reservation.activityID)
        }
    }

    /// Makes `writer` (one call) the only one that writes a receiving
    /// upload's chunks, in any process sharing the catalog, for a lease of
    /// `seconds` that each chunk renews; returns the bytes received so far
    /// and how many of its segments hold fewer than `smallSegmentBytes`, or
    /// nil while another call's lease runs.
    public func claimUpload(id: String, writer: String, seconds: Int,
                            smallSegmentBytes: UInt64) async throws -> (received: UInt64, smallSegments: Int)? {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                UPDATE uploads SET \(LeaseColumns.uploadWriter.grant(holder: 2, seconds: 3))
                WHERE id = $1 AND state = '\(UploadState.receiving)' AND (\(LeaseColumns.uploadWriter.free) OR \(LeaseColumns.uploadWriter.heldBy(2)))
                RETURNING received,
                    (SELECT count(*) FROM upload_segments s WHERE s.upload_id = uploads.id AND s.size < $4::bigint) AS small
                """, id, writer, seconds, smallSegmentBytes).first.map { ($0.uint64("received"), Int($0.int64("small"))) }
        }
    }

    /// Before a chunk is written at `offset`: renews the lease and says
    /// whether `writer` still holds it with nothing received past `offset`.
    public func renewUploadLease(id: String, writer: String, offset: UInt64, seconds: Int) async throws -> Bool {
        try await pool.withConnection(idempotent: true) { connection in
            !(try connection.query("""
                UPDATE uploads SET \(LeaseColumns.uploadWriter.extend(seconds: 4))
                WHERE id = $1 AND \(LeaseColumns.uploadWriter.heldBy(2)) AND received = $3 AND state = '\(UploadState.receiving)' RETURNING id
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
                WHERE id = $1 AND received = $2 AND state = '\(UploadState.receiving)' AND \(LeaseColumns.uploadWriter.heldBy(5)) RETURNING id
                """, uploadID, from, to, lifetime.components.seconds, writer).isEmpty)
        }
    }

    /// Records `blob` as the segment of a receiving upload from byte `first`,
    /// before its content goes into the store, so a collection keeps it from
    /// now; false unless `writer` holds the upload, its lease not run out
    /// (another call may take it over from then), with `first` bytes
    /// received. A segment a dead writer recorded at `first` (and any past
    /// it) is replaced. Content a collection is removing at this moment is
    /// refused UNAVAILABLE: the chunks are sent again once it is gone.
    public func recordUploadSegment(uploadID: String, writer: String, first: UInt64, blob: StoredBlob) async throws -> Bool {
        // Not a call's transaction: a call's deadline does not stop it (the chunks a call wrote whole count however it ends).
        try await pool.transaction(idempotent: true) { connection in
            guard try !connection.query("""
                SELECT id FROM uploads
                WHERE id = $1 AND received = $2 AND state = '\(UploadState.receiving)' AND \(LeaseColumns.uploadWriter.heldBy(3))
                  AND NOT \(LeaseColumns.uploadWriter.runOut) FOR UPDATE
                """, uploadID, first, writer).isEmpty else { return false }
            let claimed = try connection.query("""
                INSERT INTO blobs (sha256, size) VALUES ($1, $2) ON CONFLICT (sha256) DO UPDATE SET used_at = now(), size = excluded.size
                RETURNING collecting_since IS NOT NULL AS claimed
                """, blob.name.hex, blob.size)[0].bool("claimed")
            guard !claimed else {
                throw BackupError.unavailable("the server is removing content identical to these chunks from its storage just now; "
                                              + "send them again in a few seconds")
            }
            try connection.query("DELETE FROM upload_segments WHERE upload_id = $1 AND first_byte >= $2", uploadID, first)
            try connection.query("INSERT INTO upload_segments (upload_id, first_byte, size, sha256, blob) VALUES ($1, $2, $3, $4, $5)",
                                 uploadID, first, blob.size, blob.hash.hex, blob.name.hex)
            return true
        }
    }

    /// The segments holding an upload's first `received` bytes, in order;
    /// FAILED_PRECONDITION when they do not (its data is gone).
    public func uploadSegments(uploadID: String, received: UInt64) async throws -> [StoredBlob] {
        let rows = try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                SELECT first_byte, size, sha256, blob FROM upload_segments WHERE upload_id = $1 AND first_byte < $2 ORDER BY first_byte
                """, uploadID, received)
        }
        var end: UInt64 = 0
        let segments = rows.compactMap { row -> StoredBlob? in
            guard row.uint64("first_byte") == end, let hash = ContentHash(hex: row.string("sha256")),
                  let name = ContentHash(hex: row.string("blob")) else { return nil }
            end += row.uint64("size")
            return StoredBlob(hash: hash, size: row.uint64("size"), name: name)
        }
        guard segments.count == rows.count, end == received else {
            throw BackupError.failedPrecondition("the upload's data is gone (it expired or failed)")
        }
        return segments
    }

    /// Ends `writer`'s lease, if it still holds one.
    public func releaseUpload(id: String, writer: String) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE uploads SET \(LeaseColumns.uploadWriter.end) WHERE id = $1 AND \(LeaseColumns.uploadWriter.heldBy(2))", id, writer)
        }
    }

    /// Starts validating an upload that has received (and checked) all its
    /// bytes: VALIDATING, with a queued validation job. Asked again, it
    /// answers the upload as it stands, so a client that lost the answer
    /// may simply ask again.
    public func finishUpload(id: String, actor: String) async throws -> Upload {
        let id = try parseID(id, "upload id")
        return try await pool.callTransaction { connection in
            let upload = try Self.loadUpload(connection, id, lock: true)
            switch upload.state {
            case .validating, .finished:
                return upload
            case .receiving where upload.bytesReceived == upload.sizeBytes:
                break
            case .receiving:
                throw BackupError.failedPrecondition("upload \(id) has received \(upload.bytesReceived) of its \(upload.sizeBytes) bytes; "
                                                     + "send the rest, from offset \(upload.bytesReceived), before finishing it")
            default:
                throw BackupError.failedPrecondition("upload \(id) is \(upload.state)" + (upload.error.isEmpty ? "" : " (\(upload.error))")
                                                     + "; start a new upload")
            }
            let jobID = try Self.queueJob(connection, .uploadValidation, for: .upload(id), actor: actor, bytesTotal: upload.sizeBytes)
            try connection.query("""
                UPDATE uploads SET state = '\(UploadState.validating)', job_id = $2, \(LeaseColumns.uploadWriter.end)
                WHERE id = $1 AND state IN \(UploadState.validating.predecessors.sql)
                """, id, jobID)
            try Self.recordActivity(connection, upload.namespace, upload.environment, action: "upload", outcome: "RECEIVED",
                                    actor: actor, detail: "\(upload.sizeBytes) bytes; validation job \(jobID)")
            return try Self.loadUpload(connection, id)
        }
    }

    /// Gives up an upload still receiving: ABANDONED, logged with `actor`;
    /// its reservation is free from the commit on, and the caller removes its
    /// data. An upload that has already ended is answered as it stands; one
    /// being validated, or made a backup, cannot be given up.
    public func abandonUpload(id: String, actor: String) async throws -> (upload: Upload, abandoned: Bool) {
        let id = try parseID(id, "upload id")
        return try await pool.callTransaction { connection in
            let upload = try Self.loadUpload(connection, id, lock: true)
            switch upload.state {
            case .receiving:
                break
            case .validating, .finished:
                throw BackupError.failedPrecondition("upload \(id) is \(upload.state): it was finished and can no longer be abandoned"
                                                     + (upload.state == .validating ? "; cancel its validation job \(upload.jobID) instead" : ""))
            default:
                return (upload, false)
            }
            try connection.query("""
                UPDATE uploads SET state = '\(UploadState.abandoned)', error = $2, \(LeaseColumns.uploadWriter.end)
                WHERE id = $1 AND state IN \(UploadState.abandoned.predecessors.sql)
                """, id, "abandoned by \(actor)")
            try Self.recordActivity(connection, upload.namespace, upload.environment, action: "upload", outcome: "ABANDONED",
                                    actor: actor, detail: "upload \(id) after \(upload.bytesReceived) of \(upload.sizeBytes) bytes")
            return (try Self.loadUpload(connection, id), true)
        }
    }

    /// The upload a validation job checks.
    public func validatedUpload(jobID: String) async throws -> Upload {
        try await pool.withConnection(idempotent: true) { connection in
            guard let row = try connection.query("SELECT id FROM uploads WHERE job_id = $1", jobID).first else {
                throw BackupError.notFound("validation job \(jobID) has no upload")
            }
            return try Self.loadUpload(connection, row.string("id"))
        }
    }

    /// Ends a validation job: its upload becomes a FINISHED backup of kind
    /// UPLOADED in the upload's environment, with `manifest` as its content
    /// and `packageVersion` as its package version, all in one transaction.
    public func completeUpload(jobID: String, owner: String, manifest: BackupManifest, packageVersion: String) async throws {
        let snapshotID = UUID().uuidString.lowercased()
        try await pool.callTransaction(idempotent: true) { connection in
            guard let row = try connection.query("""
                SELECT u.id, u.environment_id, u.comment FROM jobs j JOIN uploads u ON u.job_id = j.id
                WHERE j.id = $1 AND \(LeaseColumns.job.of("j").heldBy(2)) AND j.status IN \(JobStatus.finished.predecessors.sql) AND u.state IN \(UploadState.finished.predecessors.sql)
                FOR UPDATE OF j, u
                """, jobID, owner).first else {
                throw BackupError.failedPrecondition("job \(jobID) is no longer held by this process")
            }
            try connection.query("""
                INSERT INTO snapshots (id, environment_id, status, kind, comment, package_version, job_id)
                VALUES ($1, $2, '\(BackupStatus.processing)', '\(BackupKind.uploaded)', $3, $4, $5)
                """, snapshotID, row.int64("environment_id"), row.string("comment"), packageVersion, jobID)
            let detail = try Self.completeSnapshot(connection, id: snapshotID, manifest: manifest)
            try connection.query("UPDATE uploads SET state = '\(UploadState.finished)', snapshot_id = $2 WHERE id = $1", row.string("id"), snapshotID)
            try connection.query("UPDATE jobs SET snapshot_id = $2 WHERE id = $1", jobID, snapshotID)
            try Self.finishJob(connection, id: jobID, owner: owner, detail: "upload \(row.string("id")) became backup \(snapshotID): " + detail)
        }
    }

    /// Ends a receiving upload as FAILED with its reason, logging it.
    public func failUpload(id: String, reason: String) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            guard let row = try connection.query("""
                UPDATE uploads u SET state = '\(UploadState.failed)', error = $2 FROM environments e
                WHERE u.id = $1 AND u.state = '\(UploadState.receiving)' AND e.id = u.environment_id
                RETURNING e.namespace, e.name, u.actor
                """, id, reason).first else { return }
            try Self.recordActivity(connection, row.string("namespace"), row.string("name"), action: "upload", outcome: "FAILED",
                                    actor: row.string("actor"), detail: reason)
        }
    }

    /// Ends as EXPIRED, logging each, the uploads that received nothing
    /// until their expiry (not one a call is writing: its chunks count in
    /// batches, and renew the expiry then), and those that received less than
    /// `minimumRate` bytes a second over a whole `window`, however much
    /// trickles in (a window starts anew each time one is passed). Says of
    /// the `listed` ids (the spool's files) which are uploads still receiving
    /// or being validated, whose files stay, and which are uploads at all (a
    /// file of none may belong to a start not yet committed).
    public func expireUploads(listed: [String], minimumRate: UInt64, window: Duration) async throws
        -> (unfinished: Set<String>, known: Set<String>)
    {
        try await pool.callTransaction(idempotent: true) { connection in
            let windowSeconds = max(1, window.components.seconds)
            let minimum = minimumRate.multipliedReportingOverflow(by: UInt64(windowSeconds))
            let expired = try connection.query("""
                UPDATE uploads u SET state = '\(UploadState.expired)', error = CASE
                    WHEN u.window_started_at + make_interval(secs => $1) < now() AND u.received - u.window_received < $2
                    THEN 'received ' || (u.received - u.window_received) || ' bytes in ' || $1 || ' seconds, less than the '
                         || $2 || ' a window must bring; its data was removed'
                    ELSE 'abandoned: nothing was received before it expired' END
                FROM environments e
                WHERE u.state IN \(UploadState.expired.predecessors.sql) AND e.id = u.environment_id
                  AND ((u.expires_at < now() AND \(LeaseColumns.uploadWriter.of("u").free))
                       OR (u.window_started_at + make_interval(secs => $1) < now() AND u.received - u.window_received < $2))
                RETURNING e.namespace, e.name, u.actor, u.id, u.error
                """, windowSeconds, minimum.overflow ? Int64.max : Int64(clamping: minimum.partialValue))
            try connection.query("""
                UPDATE uploads SET window_started_at = now(), window_received = received
                WHERE state = '\(UploadState.receiving)' AND window_started_at + make_interval(secs => $1) < now()
                """, windowSeconds)
            for row in expired {
                try Self.recordActivity(connection, row.string("namespace"), row.string("name"), action: "upload", outcome: "EXPIRED",
                                        actor: row.string("actor"), detail: "upload \(row.string("id")): \(row.string("error"))")
            }
            // The segments of ended uploads: their blobs are collected once no row refers to them.
            try connection.query("""
                DELETE FROM upload_segments s USING uploads u WHERE u.id = s.upload_id AND NOT u.state IN \(UploadState.unfinished.sql)
                """)
            let rows = try connection.query("SELECT id::text, state FROM uploads WHERE id::text = ANY($1::text[])", listed)
            let kept: Set = ["receiving", "validating"]
            return (Set(rows.filter { kept.contains($0.string("state")) }.map { $0.string("id") }), Set(rows.map { $0.string("id") }))
        }
    }
}
