import BackupPostgres
import BackupRules
import Foundation

/// Content kept as it was stored before encryption at rest: under its
/// content's hash, which is then also its name in the `blob` columns.
/// `backupd store migrate` copies it encrypted under each namespace that
/// refers to it and points that namespace's rows at the copies; once no row
/// refers to the plain object, collection removes it.
extension Catalog {
    /// The documents and dump chunks of a namespace's backups that refer to
    /// content kept as is. (Dumps stored whole, by versions before dumps
    /// were chunked, are left: their one blob is named by the backup itself.)
    private static let plainReferences = """
        SELECT f.blob FROM snapshot_files f JOIN snapshots s ON s.id = f.snapshot_id JOIN environments e ON e.id = s.environment_id
        WHERE e.namespace = $1 AND f.blob = f.sha256
        UNION SELECT c.blob FROM dump_chunks c JOIN snapshots s ON s.id = c.snapshot_id JOIN environments e ON e.id = s.environment_id
        WHERE e.namespace = $1 AND c.blob = c.blob_sha256
        """

    /// Every namespace whose backups refer to content kept as is, with how
    /// many such blobs and their bytes.
    public func namespacesWithPlainContent() async throws -> [(namespace: String, blobs: Int, bytes: UInt64)] {
        try await pool.withConnection { connection in
            try connection.query("SELECT name FROM namespaces ORDER BY name").compactMap { row in
                let namespace = row.string("name")
                let counted = try connection.query(
                    "SELECT count(*)::text AS n, coalesce(sum(size), 0)::text AS bytes FROM blobs WHERE sha256 IN (\(Self.plainReferences))",
                    namespace)[0]
                let blobs = Int(counted.string("n")) ?? 0
                return blobs == 0 ? nil : (namespace, blobs, UInt64(counted.string("bytes")) ?? 0)
            }
        }
    }

    /// Every blob kept as is that `namespace`'s backups refer to, by name:
    /// read once per run (the query walks all of the namespace's rows).
    public func plainContent(of namespace: String) async throws -> [StoredBlob] {
        try await pool.withConnection { connection in
            try connection.query("SELECT sha256, size FROM blobs WHERE sha256 IN (\(Self.plainReferences)) ORDER BY sha256", namespace)
                .compactMap { row in ContentHash(hex: row.string("sha256")).map { StoredBlob(hash: $0, size: row.uint64("size")) } }
        }
    }

    /// Points `namespace`'s references to plain content at the encrypted
    /// copies the caller stored and kept (`BlobLedger.keep`, under a
    /// collection fence), in one transaction that marks the copies used and
    /// the plain objects used now (so none goes while a job that began
    /// before may read it). A copy a collection has claimed meanwhile is
    /// left out, its references kept as they were for a later run. Returns
    /// the copies taken. The caller's `fence` must still last: once it ran
    /// out, a collection may have removed copies kept under it, and nothing
    /// is adopted (`aborted`; helper finding: a run whose fence had lapsed
    /// pointed a backup's rows at copies a collection had just removed).
    /// A fence is never renewed once out, so one that lasts now lasted since it was opened.
    public func adoptEncryptedCopies(_ copies: [(plain: ContentHash, sealed: StoredBlob)], namespace: String,
                                     fence: String) async throws -> [StoredBlob] {
        guard !copies.isEmpty else { return [] }
        return try await pool.callTransaction { connection in
            guard try !connection.query("SELECT 1 FROM collection_fences WHERE id = $1 AND until > now() FOR SHARE", fence).isEmpty else {
                throw BackupError.aborted("the run's collection fence ran out before its copies were adopted; run it again")
            }
            let claimed = try Self.markUsed(connection, copies.map(\.sealed), sizesVerified: true)
            let taken = copies.filter { !claimed.contains($0.sealed.name) }
            let (plain, sealed) = (taken.map(\.plain.hex), taken.map(\.sealed.name.hex))
            let moved = try connection.query("""
                UPDATE snapshot_files f SET blob = m.sealed FROM unnest($2::text[], $3::text[]) AS m(plain, sealed), snapshots s, environments e
                WHERE f.blob = m.plain AND f.sha256 = m.plain AND s.id = f.snapshot_id AND e.id = s.environment_id AND e.namespace = $1
                RETURNING f.snapshot_id
                """, namespace, plain, sealed) + connection.query("""
                UPDATE dump_chunks c SET blob = m.sealed FROM unnest($2::text[], $3::text[]) AS m(plain, sealed), snapshots s, environments e
                WHERE c.blob = m.plain AND c.blob_sha256 = m.plain AND s.id = c.snapshot_id AND e.id = s.environment_id AND e.namespace = $1
                RETURNING c.snapshot_id
                """, namespace, plain, sealed)
            try connection.query("UPDATE blobs SET used_at = now() WHERE sha256 = ANY($1::text[])", plain)
            // Under object lock, the backups that now refer to the copies have them retained (helper finding: they kept the
            // date of the plain objects, and the copies were never retained).
            let backups = Set(moved.map { $0.string("snapshot_id") })
            try connection.query("UPDATE snapshots SET retained_until = NULL, retention_tried_at = NULL WHERE id = ANY($1::uuid[])",
                                 backups.sorted())
            return taken.map(\.sealed)
        }
    }
}
