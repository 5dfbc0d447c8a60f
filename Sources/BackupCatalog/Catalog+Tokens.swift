import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// Who is calling: the token that authenticated the call.
public struct Caller: Sendable, Equatable {
    public let tokenID: String
    public let tokenName: String
    public let namespace: String
    public let role: Role

    public init(tokenID: String, tokenName: String, namespace: String, role: Role) {
        self.tokenID = tokenID
        self.tokenName = tokenName
        self.namespace = namespace
        self.role = role
    }
}

extension Catalog {
    static func token(_ row: PostgresRow) -> Token {
        .with {
            $0.id = row.string("id"); $0.name = row.string("name"); $0.namespace = row.string("namespace")
            $0.role = .catalogValue(row.string("role")); $0.createdUnixMS = row.int64("created_ms")
            $0.revokedUnixMS = row.int64("revoked_ms")
        }
    }

    static let tokenColumns = "id, name, namespace, role, unix_ms(created_at) AS created_ms, unix_ms(revoked_at) AS revoked_ms"

    /// Makes a token whose secret has `secretDigest` (the catalog keeps only
    /// that). A platform token has no namespace; every other has one.
    public func createToken(namespace: String, role: Role, name: String, secretDigest: ContentHash) async throws -> Token {
        guard role != .unspecified else { throw BackupError.invalidArgument("role must be viewer, operator, admin or platform") }
        if role == .platform {
            guard namespace.isEmpty else {
                throw BackupError.invalidArgument("a platform token belongs to no namespace; leave namespace empty, not \"\(namespace)\"")
            }
        } else {
            try validateName(namespace, "namespace")
        }
        guard !name.isEmpty else { throw BackupError.invalidArgument("token name is required") }
        let id = UUID().uuidString.lowercased()
        return try await pool.callTransaction { connection in
            let namespace: String? = role == .platform ? nil : namespace
            if let namespace {
                try connection.query("INSERT INTO namespaces (name) VALUES ($1) ON CONFLICT DO NOTHING", namespace)
            }
            try connection.query("INSERT INTO tokens (id, name, namespace, role, secret_sha256) VALUES ($1, $2, $3, $4, $5)",
                                 id, name, namespace, role.description, secretDigest.hex)
            return Self.token(try connection.query("SELECT \(Self.tokenColumns) FROM tokens WHERE id = $1", id)[0])
        }
    }

    /// The caller a presented secret belongs to, or nil for an unknown or revoked one.
    public func authenticate(secretDigest: ContentHash) async throws -> Caller? {
        return try await pool.withConnection { connection in
            try connection.query("SELECT id, name, namespace, role FROM tokens WHERE secret_sha256 = $1 AND revoked_at IS NULL", secretDigest.hex)
                .first.map { Caller(tokenID: $0.string("id"), tokenName: $0.string("name"), namespace: $0.string("namespace"),
                                    role: .catalogValue($0.string("role"))) }
        }
    }

    /// The tokens of a namespace in the order they were made, a page at a
    /// time; an empty namespace lists the platform tokens.
    public func listTokens(namespace: String, pageSize: UInt32 = 0, pageToken: String = "") async throws -> Page<Token> {
        let (limit, after) = try pageBounds(size: pageSize, token: pageToken) { UUID(uuidString: $0) != nil }
        return try await pool.withConnection { connection in
            let rows = try connection.query("""
                SELECT \(Self.tokenColumns) FROM tokens
                WHERE namespace IS NOT DISTINCT FROM NULLIF($1, '')
                  AND ($2::uuid IS NULL OR (created_at, id) > (SELECT created_at, id FROM tokens WHERE id = $2::uuid))
                ORDER BY created_at, id LIMIT $3
                """, namespace, after, limit + 1)
            return Page(rows, limit: limit, cursor: "id", item: Self.token)
        }
    }

    public func token(id: String) async throws -> Token {
        let id = try parseID(id, "token id")
        return try await pool.withConnection { connection in
            guard let row = try connection.query("SELECT \(Self.tokenColumns) FROM tokens WHERE id = $1", id).first else {
                throw BackupError.notFound("token \(id) does not exist")
            }
            return Self.token(row)
        }
    }

    public func revokeToken(id: String) async throws -> Token {
        let id = try parseID(id, "token id")
        return try await pool.callTransaction { connection in
            guard let row = try connection.query("""
                UPDATE tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING \(Self.tokenColumns)
                """, id).first else {
                throw BackupError.notFound("token \(id) does not exist")
            }
            return Self.token(row)
        }
    }

    /// Which of these token ids have been revoked.
    public func revokedTokens(among ids: [String]) async throws -> [String] {
        try await pool.withConnection { connection in
            try connection.query("SELECT id FROM tokens WHERE id = ANY($1::uuid[]) AND revoked_at IS NOT NULL", ids)
                .map { $0.string("id") }
        }
    }
}
