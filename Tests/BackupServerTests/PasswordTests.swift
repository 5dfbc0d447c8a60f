import BackupCatalog
import BackupPostgres
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// A tool that records its arguments before it runs.
func recordingTool(_ tool: String, log: String) throws -> String {
    try wrappedTool(tool, running: "echo \"$@\" >> '\(log)'")
}

@Suite(.serialized) struct PasswordTests {
    /// The role scripts/dev-cluster.sh makes log in with its password (scram-sha-256).
    static let role = "backupd_password_test"
    static let password = "pw-with 'quote' and \\backslash"

    @Test func connectionStringsKeepEverySettingButThePassword() throws {
        let uri = "postgresql://app:s3cret@db.example:5433/shop?sslmode=require"
        let (withoutPassword, password) = try ConnectionString.withoutPassword(uri)
        #expect(password == "s3cret")
        #expect(!withoutPassword.contains("s3cret"))
        let settings = Dictionary(uniqueKeysWithValues: try ConnectionString.settings(withoutPassword).map { ($0.key, $0.value) })
        #expect(settings["host"] == "db.example" && settings["port"] == "5433" && settings["user"] == "app")
        #expect(settings["dbname"] == "shop" && settings["sslmode"] == "require" && settings["password"] == nil)

        let quoted = "host=db password='a b\\'c' dbname=shop"
        #expect(try ConnectionString.withoutPassword(quoted).password == "a b'c")
        #expect(throws: PostgresError.self) { try ConnectionString.settings("host=db dbname") }
    }

    @Test func aPasswordProtectedDatabaseIsBackedUpAndRestoredWithoutThePasswordInAnyCommandLine() async throws {
        let literal = "'" + Self.password.replacingOccurrences(of: "'", with: "''") + "'"
        try TestPostgres.query("postgres", """
            DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(Self.role)') THEN CREATE ROLE \(Self.role) LOGIN CREATEDB; END IF;
            END $$
            """)
        try TestPostgres.query("postgres", "ALTER ROLE \(Self.role) PASSWORD \(literal)")
        let database = try TestPostgres.createDatabase("pwapp")
        let scratch = try ScratchDirectory("pwapp")
        defer {
            for name in [database] + ((try? databases(containing: "\(database)_")) ?? []) { TestPostgres.dropDatabase(name) }
            scratch.remove()
        }
        try TestPostgres.query("postgres", "ALTER DATABASE \(database) OWNER TO \(Self.role)")
        let url = ConnectionString.render([("host", "127.0.0.1"), ("port", TestPostgres.port), ("user", Self.role),
                                           ("password", Self.password), ("dbname", database)])
        // Without the password, this role cannot log in: the test really exercises password authentication.
        #expect(throws: PostgresError.self) {
            try PostgresConnection("host=127.0.0.1 port=\(TestPostgres.port) user=\(Self.role) dbname=\(database)")
        }
        let app = try PostgresConnection(url)
        try app.query("CREATE TABLE ledger (id int PRIMARY KEY, entry text)")
        try app.query("INSERT INTO ledger SELECT i, 'entry ' || i FROM generate_series(1, 500) AS i")
        try app.query("CREATE TABLE documents (key text)")
        let atBackup = try TestPostgres.tableFingerprints(database)
        try FileManager.default.createDirectory(atPath: scratch.path + "/files", withIntermediateDirectories: true)

        let commandLines = scratch.path + "/command-lines"
        try await withTestServer(arguments: ["--pg-dump", try recordingTool("pg_dump", log: commandLines),
                                             "--pg-restore", try recordingTool("pg_restore", log: commandLines)]) { server in
            let environment = try await server.withClient(token: server.platformToken) { client in
                try await client.unary(Backups.registerEnvironment, .with {
                    $0.namespace = "acme"; $0.name = "ledger"; $0.app = "ledger"; $0.databaseURL = url
                    $0.fileStorePath = scratch.path + "/files"; $0.fileQuery = "SELECT key FROM documents"
                })
            }
            try await server.withClient { client in
                #expect(environment.databaseURL.contains("password=REDACTED") && !environment.databaseURL.contains("backslash"))
                let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "ledger" })
                let backupJob = try await waitForJob(created.job.id, on: client)
                #expect(backupJob.status == .finished, "\(backupJob.error)")

                try app.query("DELETE FROM ledger WHERE id > 100")
                _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "ledger"; $0.state = .stopped })
                let job = try await client.unary(Backups.restoreBackup, .with {
                    $0.backupID = created.backup.id; $0.targetNamespace = "acme"; $0.targetEnvironment = "ledger"
                })
                let restoreJob = try await waitForJob(job.id, on: client)
                #expect(restoreJob.status == .finished, "\(restoreJob.error)")
            }
        }
        #expect(try TestPostgres.tableFingerprints(database) == atBackup)
        let recorded = try String(contentsOfFile: commandLines, encoding: .utf8)
        #expect(recorded.contains("--dbname=") && recorded.contains("--snapshot="))
        #expect(!recorded.contains("quote") && !recorded.contains("backslash"))
    }
}
