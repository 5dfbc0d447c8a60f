import BackupCatalog
import Foundation
import NIOPosix

/// A migrated catalog in a fresh database of the private cluster, for tests
/// of the catalog and of what works on it without a server.
public enum TestCatalog {
    /// Runs `body` with the catalog and its database's name, then closes
    /// the catalog and drops the database, whether `body` throws or not.
    public static func with(validateAfterIdle: Duration = .seconds(10), _ body: (Catalog, String, NIOThreadPool) async throws -> Void) async throws {
        let database = try await TestPostgres.createCatalogDatabase()
        let threadPool = NIOThreadPool(numberOfThreads: 4)
        threadPool.start()
        let catalog = Catalog(connectionString: TestPostgres.connectionString(database), maximumConnections: 4, threadPool: threadPool,
                              validateAfterIdle: validateAfterIdle)
        do {
            try await catalog.migrate()
            try await body(catalog, database, threadPool)
        } catch {
            await catalog.pool.close()
            try? await threadPool.shutdownGracefully()
            await TestPostgres.dropDatabase(database)
            throw error
        }
        await catalog.pool.close()
        try await threadPool.shutdownGracefully()
        await TestPostgres.dropDatabase(database)
    }

    /// Registers environment `name` of namespace `acme`.
    public static func register(_ catalog: Catalog, _ name: String = "shop-production") async throws {
        _ = try await catalog.registerEnvironment(.with {
            $0.namespace = "acme"; $0.name = name; $0.app = "shop"; $0.databaseURL = "dbname=x"; $0.fileStorePath = "/srv/files"
        })
    }
}

extension TestPostgres {
    /// A new database holding a migrated catalog: a copy of a template this
    /// test process migrated once. Migrating each test's catalog anew ran
    /// every migration's DDL, one test at a time under the migrations' lock,
    /// hundreds of times a run; the migrations themselves are still run, once
    /// per process here and by every catalog on a cluster of a test's own.
    public static func createCatalogDatabase() async throws -> String {
        let database = try await createDatabase("catalog", template: try await catalogTemplate.value)
        idleSessions.reuse(database)
        return database
    }
}

/// The migrated catalog that `createCatalogDatabase` copies, made on first
/// use and named for this process; templates of test processes that are gone are dropped.
private let catalogTemplate = Task<String, any Error> {
    let name = "catalog_template_\(getpid())"
    for row in try await TestPostgres.query("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'catalog\\_template\\_%'") {
        let database = row.string("datname")
        if let pid = Int32(database.dropFirst("catalog_template_".count)), pid == getpid() || kill(pid, 0) != 0 {
            await TestPostgres.dropDatabase(database)
        }
    }
    try await TestPostgres.query("postgres", "CREATE DATABASE \(name)")
    let threadPool = NIOThreadPool(numberOfThreads: 1)
    threadPool.start()
    let catalog = Catalog(connectionString: TestPostgres.connectionString(name), maximumConnections: 1, threadPool: threadPool)
    var failure: (any Error)?
    do { try await catalog.migrate() } catch { failure = error }
    await catalog.pool.close()
    try? await threadPool.shutdownGracefully()
    if let failure { throw failure }
    return name
}
