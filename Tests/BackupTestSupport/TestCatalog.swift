import BackupCatalog
import Foundation
import NIOPosix

/// A migrated catalog in a fresh database of the private cluster, for tests
/// of the catalog and of what works on it without a server.
public enum TestCatalog {
    /// Runs `body` with the catalog and its database's name, then closes
    /// the catalog and drops the database, whether `body` throws or not.
    public static func with(validateAfterIdle: Duration = .seconds(10), _ body: (Catalog, String, NIOThreadPool) async throws -> Void) async throws {
        let database = try await TestPostgres.createDatabase("catalog")
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
