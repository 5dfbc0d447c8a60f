import BackupRules
import BackupPostgres
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
