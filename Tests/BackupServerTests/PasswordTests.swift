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
        try await TestPostgres.query("postgres", """
            DO $$ BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(Self.role)') THEN CREATE ROLE \(Self.role) LOGIN CREATEDB; END IF;
            END $$
            """)
        try await TestPostgres.query("postgres", "ALTER ROLE \(Self.role) PASSWORD \(literal)")
        let database = try await TestPostgres.createDatabase("pwapp")
        let scratch = try ScratchDirectory("pwapp")
        defer {
            for name in [database] + ((try? databases(containing: "\(database)_")) ?? []) { TestPostgres.dropDatabase(name) }
            scratch.remove()
        }
        try await TestPostgres.query("postgres", "ALTER DATABASE \(database) OWNER TO \(Self.role)")
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
                #expect(environment.databaseURL.contains("password='REDACTED'") && !environment.databaseURL.contains("backslash"))
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

    /// Helper findings: the pattern that hid passwords from viewers missed
    /// spellings libpq accepts. What viewers see is libpq's own reading.
    @Test func everySpellingOfAPasswordIsHiddenFromViewers() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let (port, database) = (TestPostgres.port, app.database)
                let spellings = [
                    ("glued", "host=127.0.0.1 port=\(port) user=postgres dbname='\(database)'password=QuoteGlueSECRET2", "QuoteGlueSECRET2"),
                    ("escaped", "host=127.0.0.1 port=\(port) user=postgres dbname=\(database) password=Esc\\ SpaceSECRET3", "SpaceSECRET3"),
                    ("uri-qmark", "postgresql://postgres:Qmark?SECRET4@127.0.0.1:\(port)/\(database)", "SECRET4"),
                    ("uri-percent-key", "postgresql://postgres@127.0.0.1:\(port)/\(database)?pass%77ord=PctKeySECRET5", "PctKeySECRET5"),
                    ("uri-user", "postgresql://postgres:UserPartSECRET7@127.0.0.1:\(port)/\(database)?sslmode=disable", "UserPartSECRET7"),
                ]
                try await server.withClient(token: server.platformToken) { client in
                    for (name, url, _) in spellings {
                        _ = try await client.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "acme"; $0.name = name; $0.app = "shop"; $0.databaseURL = url; $0.fileStorePath = app.fileStore + "-\(name)"
                        })
                    }
                    let refused = await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "sslpassword"; $0.app = "shop"; $0.fileStorePath = app.fileStore + "-ssl"
                            $0.databaseURL = "postgresql://postgres@127.0.0.1:\(port)/\(database)?sslpassword=SslPwSECRET6"
                        })
                    }
                    #expect(refused?.message.contains("sslpassword") == true && refused?.message.contains("SECRET6") == false)
                }
                let viewer = try await server.makeToken(.viewer, name: "looker")
                let shown = try await server.withClient(token: viewer) { client in
                    try await client.unary(Backups.listEnvironments, .with { $0.namespace = "acme" }).environments.map(\.databaseURL)
                }
                #expect(shown.count == spellings.count)
                for url in shown {
                    #expect(url.contains("password='REDACTED'") && !url.contains("SECRET"), "\(url)")
                }
            }
        }
    }

    /// Helper finding: libpq's parse errors quote the text they could not
    /// parse, a password among it; backupd does not repeat them.
    @Test func libpqsParseErrorsAreNotRepeated() async throws {
        try await withInProcessServer { server in
            let refused = await expectStatus(.invalidArgument) {
                _ = try await server.withClient(token: server.platformToken) { client in
                    try await client.unary(Backups.registerEnvironment, .with {
                        $0.namespace = "acme"; $0.name = "bad"; $0.app = "shop"; $0.fileStorePath = TestServer.fileStoreRoot + "/bad-\(UUID())"
                        $0.databaseURL = "postgresql://postgres@127.0.0.1/x?password=Bad%zzSECRET7"
                    })
                }
            }
            #expect(refused?.message.contains("not a libpq connection string") == true && refused?.message.contains("SECRET") == false,
                    "\(String(describing: refused))")
        }
        let catalog = try await runCommand("\(binDirectory)/backupd", ["token", "create", "--platform", "--name", "p", "--catalog",
                                                               "postgresql://postgres:CatBad%zzSECRET8@127.0.0.1/x"])
        #expect(catalog.status != 0 && !catalog.standardError.contains("SECRET8") && !catalog.standardOutput.contains("SECRET8"),
                "\(catalog.standardError)")
    }
}
