import BackupCatalog
import BackupClient
import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle

/// A backupd server run inside the test process with its own catalog
/// database and blob store, reached through the in-process transport: the
/// same dispatcher, handlers, catalog and jobs as `backupd serve`, without
/// TLS, sockets or a process. For handler-level tests; signals, `kill -9`,
/// the CLI and the wire itself are `TestServer`'s.
public final class InProcessServer: BackupTestServer {
    public let catalogDatabase: String
    public var blobDirectory: String { scratch.path + "/blobs" }
    public let adminToken: String
    public let platformToken: String
    private let catalog: Catalog
    private let transport: InProcessTransport
    private let group: ServiceGroup
    private let running: Task<Void, any Error>
    private let threadPools: [NIOThreadPool]
    private let scratch: ScratchDirectory
    /// The catalog is on a cluster of the test's own, not the private one.
    private let catalogElsewhere: Bool

    private init(catalogDatabase: String, catalogElsewhere: Bool, adminToken: String, platformToken: String, catalog: Catalog, transport: InProcessTransport,
                 group: ServiceGroup, running: Task<Void, any Error>, threadPools: [NIOThreadPool], scratch: ScratchDirectory) {
        self.catalogDatabase = catalogDatabase
        self.catalogElsewhere = catalogElsewhere
        self.adminToken = adminToken
        self.platformToken = platformToken
        self.catalog = catalog
        self.transport = transport
        self.group = group
        self.running = running
        self.threadPools = threadPools
        self.scratch = scratch
    }

    /// Starts a server; `configure` changes its configuration from the test default. Its catalog is a new
    /// database of the private cluster, or of `catalogCluster` (one a test may restart).
    public static func start(catalogCluster: TestCluster? = nil,
                             configure: (inout ServerConfiguration) throws -> Void = { _ in }) async throws -> InProcessServer {
        let scratch = try ScratchDirectory("backupd-in-process")
        let database: String
        let connectionString: String
        if let catalogCluster {
            database = try catalogCluster.createDatabase("catalog")
            connectionString = catalogCluster.connectionString(database)
        } else {
            database = try TestPostgres.createDatabase("catalog")
            connectionString = TestPostgres.connectionString(database)
        }
        let (catalogThreads, jobThreads) = (NIOThreadPool(numberOfThreads: 4), NIOThreadPool(numberOfThreads: 8))
        catalogThreads.start()
        jobThreads.start()
        let catalog = Catalog(connectionString: connectionString, maximumConnections: 8, threadPool: catalogThreads)
        try await catalog.migrate()
        let (_, admin) = try await catalog.createToken(namespace: TestServer.namespace, role: .admin, name: "test-admin")
        let (_, platform) = try await catalog.createToken(namespace: "", role: .platform, name: "test-platform")

        var configuration = ServerConfiguration(tls: nil)
        configuration.fileStoreRoots = [TestServer.fileStoreRoot]
        configuration.downloads.keys = try URLSigningKeys(parsing: testDownloadKeys)
        // A test's environments get no nightly backup because its run crossed a window; scheduler tests turn it on.
        configuration.schedule.enabled = false
        try configure(&configuration)
        var logger = Logger(label: "backupd-in-process") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        let server = try await BackupServer(configuration: configuration, catalog: catalog,
                                            blobStore: try LocalBlobStore(root: scratch.path + "/blobs"), threadPool: jobThreads, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: logger))
        let running = Task { try await group.run() }
        let transport = InProcessTransport(dispatcher: server.dispatcher, limits: configuration.connections,
                                           maxFrameBytes: configuration.maxFrameBytes, logger: logger)
        return InProcessServer(catalogDatabase: database, catalogElsewhere: catalogCluster != nil, adminToken: admin, platformToken: platform, catalog: catalog, transport: transport,
                               group: group, running: running, threadPools: [catalogThreads, jobThreads], scratch: scratch)
    }

    public func withClient<T: Sendable>(token: String?, _ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
        try await transport.withConnection { inbound, send in
            try await BackupClient.withTransport(token: token ?? adminToken, inbound: inbound, write: send, body)
        }
    }

    /// Shuts the server down gracefully and removes its catalog and blobs.
    public func remove() async {
        await group.triggerGracefulShutdown()
        _ = try? await running.value
        await catalog.pool.close()
        for pool in threadPools { try? await pool.shutdownGracefully() }
        if !catalogElsewhere { TestPostgres.dropDatabase(catalogDatabase) }  // a cluster of the test's own goes with it
        scratch.remove()
    }
}

/// Starts an in-process server, runs `body`, and removes the server whatever happens.
public func withInProcessServer<T: Sendable>(catalogCluster: TestCluster? = nil, configure: (inout ServerConfiguration) throws -> Void = { _ in },
                                             _ body: (InProcessServer) async throws -> T) async throws -> T {
    let server = try await InProcessServer.start(catalogCluster: catalogCluster, configure: configure)
    do {
        let value = try await body(server)
        await server.remove()
        return value
    } catch {
        await server.remove()
        throw error
    }
}
