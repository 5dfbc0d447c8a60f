import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
@testable import BackupServer
import Testing

/// The connection strings backupd makes for app databases, without a server.
@Suite struct AppDatabaseTests {
    private func databases(_ configure: (inout AppDatabasePolicy) -> Void = { _ in }) -> AppDatabases {
        var policy = AppDatabasePolicy()
        configure(&policy)
        return AppDatabases(policy: policy, catalog: DatabaseIdentity(systemIdentifier: "1", database: "backupd"))
    }

    private func settings(_ connectionString: String) throws -> [String: String] {
        Dictionary(try ConnectionString.settings(connectionString).map { ($0.key, $0.value) }) { $1 }
    }

    @Test func onlyTheURLsSettingsAndBackupdsSafeDefaultsAreUsed() throws {
        let made = try databases().connectionString("host=db password='a b\\'c' dbname=shop options='-c search_path=app'",
                                                   database: "postgres")
        let given = try settings(made)
        #expect(given["password"] == "a b'c" && given["dbname"] == "postgres" && given["host"] == "db")
        #expect(given["passfile"]?.hasPrefix("/nonexistent/") == true)
        #expect(given["sslcert"]?.hasPrefix("/nonexistent/") == true && given["sslkey"]?.hasPrefix("/nonexistent/") == true)
        #expect(given["gssencmode"] == "disable" && given["connect_timeout"] == "10" && given["keepalives"] == "1")
        #expect(given["options"] == "-c search_path=app -c statement_timeout=5min -c lock_timeout=30s")
        // Certificates the URL names are its own to use.
        let withCertificate = try settings(try databases().connectionString("host=db sslcert=/etc/app/client.crt"))
        #expect(withCertificate["sslcert"] == "/etc/app/client.crt")
    }

    @Test func hostsAreTCPAndWithinTheAllowList() throws {
        #expect(throws: BackupError.self) { try databases().connectionString("host=/var/run/postgresql dbname=app") }
        #expect(throws: BackupError.self) { try databases().connectionString("host=db,/tmp dbname=app") }
        #expect(throws: BackupError.self) { try databases().connectionString("dbname=app") }
        #expect(throws: BackupError.self) { try databases().connectionString("host=db service=x") }
        #expect(throws: BackupError.self) { try databases().connectionString("host=db passfile=/root/.pgpass") }
        #expect(throws: BackupError.self) { try databases().connectionString("not a connection string") }
        _ = try databases { $0.allowSocketHosts = true }.connectionString("host=/var/run/postgresql dbname=app")
        let allowList = databases { $0.allowedHosts = ["db.internal", "10.0.0.5"] }
        _ = try allowList.connectionString("host=DB.internal dbname=app")
        _ = try allowList.connectionString("postgresql://app@10.0.0.5/app")
        #expect(throws: BackupError.self) { try allowList.connectionString("host=db.internal,evil.example dbname=app") }
        #expect(throws: BackupError.self) { try allowList.connectionString("host=db.internal hostaddr=127.0.0.1 dbname=app") }
    }
}
