import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// A namespace's data key as the catalog keeps it: wrapped by master key
/// `keyID` of the storage key file, which stays apart from the catalog.
public struct WrappedNamespaceKey: Sendable, Equatable {
    public let namespace: String
    public let keyID: String
    public let wrapped: [UInt8]

    public init(namespace: String, keyID: String, wrapped: [UInt8]) {
        self.namespace = namespace
        self.keyID = keyID
        self.wrapped = wrapped
    }
}

/// The wrapped data keys of namespaces, which their blobs are addressed and
/// encrypted with. Nothing here can unwrap them: the master keys are the
/// server's, never the catalog's.
extension Catalog {
    /// The namespace's wrapped key; when it has none yet, `make()` is kept
    /// as its key, unless another process kept one first (whose is returned).
    public func namespaceKey(_ namespace: String, orKeep make: @Sendable () -> WrappedNamespaceKey) async throws -> WrappedNamespaceKey {
        if let known = try await namespaceKey(namespace) { return known }
        let new = make()
        return try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                INSERT INTO namespace_keys (namespace, key_id, wrapped) VALUES ($1, $2, $3) ON CONFLICT (namespace) DO NOTHING
                """, namespace, new.keyID, Data(new.wrapped).base64EncodedString())
            guard let row = try connection.query("SELECT namespace, key_id, wrapped FROM namespace_keys WHERE namespace = $1", namespace).first,
                  let key = Self.namespaceKey(row) else {
                throw BackupError.internalFailure("the catalog lost namespace \(namespace)'s key as it was made")
            }
            return key
        }
    }

    /// The namespace's wrapped key, or nil when it has none.
    public func namespaceKey(_ namespace: String) async throws -> WrappedNamespaceKey? {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("SELECT namespace, key_id, wrapped FROM namespace_keys WHERE namespace = $1", namespace).first
                .flatMap(Self.namespaceKey)
        }
    }

    /// Every namespace's wrapped key, for wrapping them again.
    public func namespaceKeys() async throws -> [WrappedNamespaceKey] {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("SELECT namespace, key_id, wrapped FROM namespace_keys ORDER BY namespace").compactMap(Self.namespaceKey)
        }
    }

    /// Replaces `old` by `new` (the same key wrapped again); false when
    /// the row is no longer `old` (another rotation got there first).
    public func replaceNamespaceKey(_ old: WrappedNamespaceKey, with new: WrappedNamespaceKey) async throws -> Bool {
        try await pool.withConnection(idempotent: true) { connection in
            !(try connection.query("""
                UPDATE namespace_keys SET key_id = $3, wrapped = $4, wrapped_at = now()
                WHERE namespace = $1 AND wrapped = $2 RETURNING namespace
                """, old.namespace, Data(old.wrapped).base64EncodedString(), new.keyID, Data(new.wrapped).base64EncodedString()).isEmpty)
        }
    }

    private static func namespaceKey(_ row: PostgresRow) -> WrappedNamespaceKey? {
        guard let wrapped = Data(base64Encoded: row.string("wrapped")) else { return nil }
        return WrappedNamespaceKey(namespace: row.string("namespace"), keyID: row.string("key_id"), wrapped: Array(wrapped))
    }
}

/// What shredding a namespace's data key removes (or, planned, would).
public struct NamespaceShred: Sendable, Equatable {
    public let namespace: String
    /// The master key that wrapped the data key.
    public let keyID: String
    public let backups: Int
    public let uploads: Int

    public init(namespace: String, keyID: String, backups: Int, uploads: Int) {
        self.namespace = namespace
        self.keyID = keyID
        self.backups = backups
        self.uploads = uploads
    }
}

extension Catalog {
    /// Crypto-shredding: deletes `namespace`'s data key and every backup and
    /// upload of its environments in one transaction, so what the store keeps
    /// of it (and every copy of the store) can no longer be read, and the
    /// next collections remove it. Its environments and schedules stay: its
    /// next backup starts afresh under a new key. Refused while any job works
    /// in or on the namespace; the environments' rows stay locked until the
    /// end, so no job is queued meanwhile. With `dryRun`, only says what it
    /// would delete.
    public func shredNamespaceKey(_ namespace: String, actor: String, dryRun: Bool) async throws -> NamespaceShred {
        try await pool.callTransaction { connection in
            guard try !connection.query("SELECT 1 FROM namespaces WHERE name = $1", namespace).isEmpty else {
                throw BackupError.notFound("namespace \(namespace) does not exist")
            }
            guard let key = try connection.query(
                "SELECT namespace, key_id, wrapped FROM namespace_keys WHERE namespace = $1 FOR UPDATE", namespace
            ).first.flatMap(Self.namespaceKey) else {
                throw BackupError.failedPrecondition(
                    "namespace \(namespace) has no data key: nothing it keeps is encrypted, so no key can be shredded; "
                        + "delete its environments with force to delete its backups")
            }
            let environments = "{" + (try connection.query(
                "SELECT id FROM environments WHERE namespace = $1 ORDER BY id FOR UPDATE", namespace
            ).map { String($0.int64("id")) }).joined(separator: ",") + "}"
            if let job = try connection.query("""
                SELECT j.id, j.kind, e.namespace || '/' || e.name AS target FROM jobs j JOIN environments e ON e.id = j.environment_id
                WHERE j.environment_id = ANY($1::bigint[]) AND j.status IN \(JobStatus.active.sql) LIMIT 1
                """, environments).first {
                throw BackupError.failedPrecondition(
                    "namespace \(namespace) is running \(job.string("kind")) job \(job.string("id")) in \(job.string("target")); "
                        + "wait for its jobs to end or cancel them")
            }
            let backups = try connection.query(
                "SELECT id FROM snapshots WHERE environment_id = ANY($1::bigint[]) FOR UPDATE", environments).count
            try Self.refuseWhileUsed(connection, "a backup of namespace \(namespace)", usedBy: "s.environment_id = ANY($1::bigint[])",
                                     environments)
            let uploads = try connection.query("SELECT id FROM uploads WHERE environment_id = ANY($1::bigint[])", environments).count
            let shred = NamespaceShred(namespace: namespace, keyID: key.keyID, backups: backups, uploads: uploads)
            guard !dryRun else { return shred }
            try connection.query("DELETE FROM snapshots WHERE environment_id = ANY($1::bigint[])", environments)
            try connection.query("DELETE FROM uploads WHERE environment_id = ANY($1::bigint[])", environments)
            try connection.query("DELETE FROM namespace_keys WHERE namespace = $1", namespace)
            try Self.recordActivity(connection, namespace, "", action: "shred-key", outcome: "FINISHED", actor: actor,
                                    detail: "data key wrapped by \(key.keyID) deleted with \(backups) backups and \(uploads) uploads")
            return shred
        }
    }
}
