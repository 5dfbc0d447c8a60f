import BackupPostgres
import BackupRules
import BackupWire
import Foundation

/// The catalog's side of blob collection, which runs beside jobs. The blob
/// store's side (removing files, listing what the store holds) is the
/// server's `BlobCollector`; the catalog holds no connection while it works.
///
/// A job records each blob it stores or reuses (`markBlobsUsed`), which
/// marks it used now; nothing used since the oldest running job began (the
/// fence) is collected, so what a job stored and has yet to reference stays
/// however long it runs. Collection claims a blob's row before its content
/// goes (`collecting_since`) and forgets the row once it went; a job that
/// marks a claimed blob takes it as gone, so no backup ever references
/// content a collection is removing.
extension Catalog {
    /// How long a claim of a collection that never finished (its process
    /// died) holds before another collection takes the blob over.
    static let staleBlobClaim = "15 minutes"

    /// Marks `blobs` used now (their rows go by the name the store keeps
    /// them under) and returns the names of those a collection has claimed,
    /// which the caller must take as gone. A claim older than
    /// `staleBlobClaim` is its dead process's and is taken back: the blob is
    /// the caller's again (its content there or not, as the caller finds). One row per content, however
    /// many documents or chunks share it (a statement may not upsert a row
    /// twice). A size not `verified` (an uploaded archive's claim, before
    /// its bytes are read) is written only into a new row: a tenant stating
    /// a known hash with a false size changes no row another backup reads.
    public func markBlobsUsed(_ blobs: [StoredBlob], sizesVerified verified: Bool = true) async throws -> Set<ContentHash> {
        var seen = Set<ContentHash>()
        let distinct = blobs.filter { seen.insert($0.name).inserted }
        guard !distinct.isEmpty else { return [] }
        return try await pool.withConnection(idempotent: true) { connection in
            var claimed = Set<ContentHash>()
            for start in stride(from: 0, to: distinct.count, by: Catalog.insertBatch) {
                claimed.formUnion(try Self.markUsed(connection, distinct[start..<min(start + Catalog.insertBatch, distinct.count)],
                                                    sizesVerified: verified))
            }
            return claimed
        }
    }

    /// Marks distinct `blobs` used now, making rows for those without; returns the names of those a collection claimed.
    static func markUsed(_ connection: PostgresConnection, _ blobs: some Collection<StoredBlob>, sizesVerified verified: Bool) throws
        -> Set<ContentHash> {
        Set(try connection.query("""
            INSERT INTO blobs (sha256, size)
            SELECT sha256, size::bigint FROM unnest($1::text[], $2::text[]) AS b(sha256, size)
            ON CONFLICT (sha256) DO UPDATE SET used_at = now(), size = \(verified ? "excluded.size" : "blobs.size"),
                collecting_since = CASE WHEN blobs.collecting_since < now() - interval '\(Self.staleBlobClaim)' THEN NULL
                                        ELSE blobs.collecting_since END
            RETURNING sha256, collecting_since IS NOT NULL AS claimed
            """, blobs.map(\.name.hex), blobs.map { String($0.size) }).filter { $0.bool("claimed") }.compactMap { ContentHash(hex: $0.string("sha256")) })
    }

    /// Claims the rows of up to `limit` blobs no snapshot, ready archive or
    /// unfinished upload refers to, nothing used since the fence and nothing
    /// the store still retains (object lock: it would refuse), and
    /// returns them with the fence's age: the caller removes their content,
    /// then `forgetCollectedBlobs` (or `releaseBlobClaims` for what it could
    /// not remove), and claims the next batch. A claim lives as long as one
    /// batch's removal, which is what a job storing that content waits for.
    public func claimUnreferencedBlobs(limit: Int = 1000) async throws -> (claimed: [ContentHash], fenceAge: Duration) {
        try await pool.withConnection { connection in
            try connection.transaction {
                let fenceAge = try connection.query("""
                    SELECT extract(epoch FROM now() - least(now(), (SELECT min(started_at) FROM jobs WHERE status = '\(JobStatus.running)'),
                                                            (SELECT min(since) FROM collection_fences WHERE until > now())))::float8::text
                        AS age
                    """)[0].string("age")
                let claimable = "(collecting_since IS NULL OR collecting_since < now() - interval '\(Self.staleBlobClaim)')"
                let claimed = try connection.query("""
                    UPDATE blobs SET collecting_since = now()
                    WHERE \(claimable) AND sha256 IN (
                      SELECT b.sha256 FROM blobs b
                      WHERE b.used_at < now() - make_interval(secs => $1::float8) AND \(claimable)
                      AND (b.retain_until IS NULL OR b.retain_until <= now())
                      AND NOT EXISTS (SELECT 1 FROM snapshot_files f WHERE f.blob = b.sha256)
                      AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.dump_sha256 = b.sha256
                                      AND NOT EXISTS (SELECT 1 FROM dump_chunks d WHERE d.snapshot_id = s.id))
                      AND NOT EXISTS (SELECT 1 FROM dump_chunks c WHERE c.blob = b.sha256)
                      AND NOT EXISTS (SELECT 1 FROM archives a WHERE a.blob = b.sha256 AND a.state = '\(DownloadRecord.State.ready)')
                      AND NOT EXISTS (SELECT 1 FROM upload_segments s JOIN uploads u ON u.id = s.upload_id
                                      WHERE s.blob = b.sha256 AND u.state IN \(UploadState.unfinished.sql))
                      LIMIT $2 FOR UPDATE SKIP LOCKED)
                    RETURNING sha256
                    """, fenceAge, limit).compactMap { ContentHash(hex: $0.string("sha256")) }
                return (claimed, .milliseconds(Int64((Double(fenceAge) ?? 0) * 1000)))
            }
        }
    }

    /// Opens a fence for work outside jobs that stores blobs: until it is
    /// closed or its lease of `lease` runs out (its process died), nothing
    /// used since now is collected, as for a running job. `holder` names
    /// work of which one runs at a time: while another fence of that name
    /// lasts, this one is refused (`aborted`). Returns the fence's id.
    public func openCollectionFence(lease: Duration, holder: String) async throws -> String {
        let id = UUID().uuidString.lowercased()
        let until = try await pool.transaction { connection in
            try connection.query("DELETE FROM collection_fences WHERE holder = $1 AND until <= now()", holder)
            let opened = try connection.query("""
                INSERT INTO collection_fences (id, until, holder) VALUES ($1, now() + make_interval(secs => $2), $3)
                ON CONFLICT (holder) DO NOTHING RETURNING id
                """, id, lease.components.seconds, holder)
            guard opened.isEmpty else { return nil as String? }
            return try connection.query("SELECT to_char(until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS until FROM collection_fences WHERE holder = $1",
                                        holder).first?.string("until") ?? "now"
        }
        if let until {
            throw BackupError.aborted("another \(holder) is running; try again once it ends (or after \(until) UTC, if its process died)")
        }
        return id
    }

    /// Extends a fence's lease to `lease` from now. A fence whose lease
    /// already ran out is not revived (another run may hold the name now):
    /// that is `aborted`, and the work it fenced must stop.
    public func renewCollectionFence(_ id: String, lease: Duration) async throws {
        let renewed = try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE collection_fences SET until = now() + make_interval(secs => $2) WHERE id = $1 AND until > now() RETURNING id", id,
                                 lease.components.seconds).count
        }
        guard renewed == 1 else { throw BackupError.aborted("the run's collection fence ran out before it was renewed; run it again") }
    }

    public func closeCollectionFence(_ id: String) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("DELETE FROM collection_fences WHERE id = $1 OR until < now() - interval '1 day'", id)
        }
    }

    /// Claims content the store holds that no row knows (what a failed job
    /// stored and never recorded): each gets a claimed row of its own.
    /// Content a job is recording meanwhile is not claimed: its insert
    /// comes first, or this one waits for it and finds the row.
    public func claimUnrecordedBlobs(_ hashes: [ContentHash]) async throws -> [ContentHash] {
        guard !hashes.isEmpty else { return [] }
        return try await pool.withConnection { connection in
            try connection.query("""
                INSERT INTO blobs (sha256, size, collecting_since) SELECT unnest($1::text[]), 0, now()
                ON CONFLICT DO NOTHING RETURNING sha256
                """, hashes.map(\.hex)).compactMap { ContentHash(hex: $0.string("sha256")) }
        }
    }

    /// Drops the rows of claimed blobs whose content is gone.
    public func forgetCollectedBlobs(_ hashes: [ContentHash]) async throws {
        guard !hashes.isEmpty else { return }
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("DELETE FROM blobs WHERE sha256 = ANY($1::text[]) AND collecting_since IS NOT NULL", hashes.map(\.hex))
        }
    }

    /// Gives back the claims of blobs whose content could not be removed
    /// (an unrecorded one keeps its row: the next collection takes it).
    public func releaseBlobClaims(_ hashes: [ContentHash]) async throws {
        guard !hashes.isEmpty else { return }
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE blobs SET collecting_since = NULL WHERE sha256 = ANY($1::text[])", hashes.map(\.hex))
        }
    }
}
