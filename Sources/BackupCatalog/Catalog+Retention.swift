import BackupPostgres
import BackupRules
import BackupWire
import Foundation

/// A finished backup whose objects the store must retain until `until`:
/// its expiry, or sooner under the operator's cap.
public struct BackupToRetain: Sendable, Equatable {
    public let id: String
    public let until: Date
}

/// The catalog's side of object lock (`--s3-object-lock`): which finished
/// backups' objects are not yet retained by the store as long as they must
/// be, and until when each object is retained. Collection leaves an object
/// until that date, as the store would refuse to delete it.
extension Catalog {
    /// Up to `limit` finished, unexpired backups whose objects are not yet
    /// retained until their expiry, or until `cap` from now if that comes
    /// first (so a backup kept for years is retained a cap at a time, and
    /// extended as time passes). Each is marked tried now: one that keeps
    /// failing (an object gone from the store) waits a minute, behind the
    /// others, rather than holding every later backup back.
    public func backupsToRetain(limit: Int, cap: Duration) async throws -> [BackupToRetain] {
        try await pool.callTransaction(idempotent: true) { connection in
            try connection.query("""
                UPDATE snapshots s SET retention_tried_at = now() FROM (
                    SELECT id FROM snapshots
                    WHERE status = '\(BackupStatus.finished)' AND expires_at > now()
                      AND (retained_until IS NULL OR retained_until < least(expires_at, now() + make_interval(secs => $2)))
                      AND (retention_tried_at IS NULL OR retention_tried_at < now() - interval '1 minute')
                    ORDER BY retention_tried_at NULLS FIRST, finished_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS due
                WHERE s.id = due.id
                RETURNING s.id, unix_ms(least(s.expires_at, now() + make_interval(secs => $2))) AS until_ms
                """, limit, cap.components.seconds).map {
                BackupToRetain(id: $0.string("id"), until: Date(timeIntervalSince1970: Double($0.int64("until_ms")) / 1000))
            }
        }
    }

    /// The names of the objects `backup` refers to that are not yet retained until its `until`.
    public func objectsToRetain(_ backup: BackupToRetain) async throws -> [ContentHash] {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                SELECT b.sha256 FROM blobs b WHERE (b.retain_until IS NULL OR b.retain_until < to_timestamp($2::double precision / 1000))
                AND b.sha256 IN (SELECT blob FROM snapshot_files WHERE snapshot_id = $1
                                 UNION SELECT blob FROM dump_chunks WHERE snapshot_id = $1
                                 UNION SELECT s.dump_sha256 FROM snapshots s WHERE s.id = $1
                                       AND NOT EXISTS (SELECT 1 FROM dump_chunks d WHERE d.snapshot_id = s.id))
                """, backup.id, Int64(backup.until.timeIntervalSince1970 * 1000)).compactMap { ContentHash(hex: $0.string("sha256")) }
        }
    }

    /// Records that the store retains `objects` until `until` (never moving
    /// a date earlier), and, once they are all of its objects, that
    /// `backup`'s are retained until then.
    public func recordRetention(of objects: [ContentHash], until: Date, completing backup: BackupToRetain?) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            try connection.query("""
                UPDATE blobs SET retain_until = greatest(retain_until, to_timestamp($2::double precision / 1000)) WHERE sha256 = ANY($1::text[])
                """, objects.map(\.hex), Int64(until.timeIntervalSince1970 * 1000))
            if let backup {
                try connection.query("UPDATE snapshots SET retained_until = to_timestamp($2::double precision / 1000) WHERE id = $1",
                                     backup.id, Int64(until.timeIntervalSince1970 * 1000))
            }
        }
    }
}
