import BackupPostgres
import BackupRules
import BackupWire
import Foundation

/// A finished backup whose objects the store must retain until its expiry.
public struct BackupToRetain: Sendable, Equatable {
    public let id: String
    public let expires: Date
}

/// The catalog's side of object lock (`--s3-object-lock`): which finished
/// backups' objects are not yet retained by the store until the backups'
/// expiry, and until when each object is retained. Collection leaves an
/// object until that date, as the store would refuse to delete it.
extension Catalog {
    /// Up to `limit` finished backups whose objects were not yet retained until
    /// their expiry (new ones, and those whose expiry moved later), oldest first.
    public func backupsToRetain(limit: Int) async throws -> [BackupToRetain] {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                SELECT id, unix_ms(expires_at) AS expires_ms FROM snapshots
                WHERE status = '\(BackupStatus.finished)' AND expires_at IS NOT NULL
                  AND (retained_until IS NULL OR retained_until < expires_at)
                ORDER BY finished_at LIMIT $1
                """, limit).map { BackupToRetain(id: $0.string("id"), expires: Date(timeIntervalSince1970: Double($0.int64("expires_ms")) / 1000)) }
        }
    }

    /// The names of the objects `backup` refers to that are not yet retained
    /// until `until`.
    public func objectsToRetain(_ backup: BackupToRetain) async throws -> [ContentHash] {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                SELECT b.sha256 FROM blobs b WHERE (b.retain_until IS NULL OR b.retain_until < to_timestamp($2::double precision / 1000))
                AND b.sha256 IN (SELECT blob FROM snapshot_files WHERE snapshot_id = $1
                                 UNION SELECT blob FROM dump_chunks WHERE snapshot_id = $1
                                 UNION SELECT s.dump_sha256 FROM snapshots s WHERE s.id = $1
                                       AND NOT EXISTS (SELECT 1 FROM dump_chunks d WHERE d.snapshot_id = s.id))
                """, backup.id, Int64(backup.expires.timeIntervalSince1970 * 1000)).compactMap { ContentHash(hex: $0.string("sha256")) }
        }
    }

    /// Records that the store retains `objects` until `until` (never moving
    /// a date earlier), and, once they are all of its objects, that
    /// `backup`'s are retained until its expiry.
    public func recordRetention(of objects: [ContentHash], until: Date, completing backup: BackupToRetain?) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            try connection.query("""
                UPDATE blobs SET retain_until = greatest(retain_until, to_timestamp($2::double precision / 1000)) WHERE sha256 = ANY($1::text[])
                """, objects.map(\.hex), Int64(until.timeIntervalSince1970 * 1000))
            if let backup {
                try connection.query("UPDATE snapshots SET retained_until = to_timestamp($2::double precision / 1000) WHERE id = $1",
                                     backup.id, Int64(backup.expires.timeIntervalSince1970 * 1000))
            }
        }
    }
}
