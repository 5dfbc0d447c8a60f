import BackupCatalog
import BackupClient
import BackupRules
import BackupStorage
import BackupPostgres
@_spi(Testing) import BackupServer
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// A backupd server run inside the test process with its own catalog
/// database and blob store: the same dispatcher, handlers, catalog and jobs
/// as `backupd serve`. Reached through the in-process transport (no TLS, no
/// socket) for handler-level tests, or, started `live`, through its real TLS
/// listener on a loopback port, for tests of the wire, the download URLs and
/// the CLI. Signals, `kill -9`, resident memory and descriptor limits are
/// `TestServer`'s, the one place a backupd process is the point.
public final class InProcessServer: WireTestServer {
    public let catalogDatabase: String
    public var blobDirectory: String { storage.directory }
    public let storage: TestStorage
    public let adminToken: String
    public let platformToken: String
    /// The server's catalog, for what a test checks or sets beside the API.
    public let catalog: Catalog
    private let server: BackupServer
    private let leases: CatalogLeases
    private let transport: InProcessTransport
    private let connections: ConnectionGauge
    private let group: ServiceGroup
    private let running: Task<Void, any Error>
    private let threadPools: [NIOThreadPool]
    private let scratch: ScratchDirectory
    /// The catalog is on a cluster of the test's own, not the private one.
    private let catalogElsewhere: Bool
    /// `HOST:PORT` of the TLS listener of a live server; empty otherwise.
    public let address: String
    /// `HOST:PORT` of the admin listener of a server started with `admin`; empty otherwise.
    public let adminAddress: String
    /// What the server counts and measures.
    public let metrics: ServiceMetrics

    private init(storage: TestStorage, catalogDatabase: String, catalogElsewhere: Bool, address: String, adminAddress: String, adminToken: String,
                 platformToken: String, catalog: Catalog, server: BackupServer, metrics: ServiceMetrics,
                 leases: CatalogLeases, transport: InProcessTransport, connections: ConnectionGauge, group: ServiceGroup,
                 running: Task<Void, any Error>, threadPools: [NIOThreadPool], scratch: ScratchDirectory) {
        self.storage = storage
        self.address = address
        self.adminAddress = adminAddress
        self.metrics = metrics
        self.catalogDatabase = catalogDatabase
        self.catalogElsewhere = catalogElsewhere
        self.adminToken = adminToken
        self.platformToken = platformToken
        self.catalog = catalog
        self.server = server
        self.leases = leases
        self.transport = transport
        self.connections = connections
        self.group = group
        self.running = running
        self.threadPools = threadPools
        self.scratch = scratch
    }

    /// Starts a server; `configure` changes its configuration from the test default. Its catalog is a new
    /// database of the private cluster, or of `catalogCluster` (one a test may restart). A `live` one
    /// listens with the development certificate on a loopback port, and its clients connect over TLS.
    /// A `log` keeps what the server logs at info and above (its access log among it). With `admin`, its
    /// admin listener (`/metrics`, `/healthz`, `/readyz`) listens on a loopback port.
    public static func start(live: Bool = false, admin: Bool = false, tls: TLSSettings? = nil, clientCA: String? = nil,
                             catalogCluster: TestCluster? = nil,
                             blobStore: (any BlobStore) -> any BlobStore = { $0 }, log: CapturedLog? = nil,
                             configure: (inout ServerConfiguration) throws -> Void = { _ in }) async throws -> InProcessServer {
        let scratch = try ScratchDirectory("backupd-in-process")
        let storage = try await TestStorage.make(directory: scratch.path + "/blobs")
        let database: String
        let connectionString: String
        if let catalogCluster {
            database = try await catalogCluster.createDatabase("catalog")
            connectionString = catalogCluster.connectionString(database)
        } else {
            database = try await TestPostgres.createCatalogDatabase()
            connectionString = TestPostgres.connectionString(database)
        }
        let (catalogThreads, jobThreads) = (NIOThreadPool(numberOfThreads: 4), NIOThreadPool(numberOfThreads: 8))
        catalogThreads.start()
        jobThreads.start()
        let metrics = ServiceMetrics()
        let leases = CatalogLeases(forwardingTo: metrics)
        let catalog = Catalog(connectionString: connectionString, maximumConnections: 8, threadPool: catalogThreads, observer: leases)
        try await catalog.migrate()
        let adminSecret = AccessTokenSecret(), platform = AccessTokenSecret()
        _ = try await catalog.createToken(namespace: TestServer.namespace, role: .admin, name: "test-admin", secretDigest: adminSecret.digest)
        _ = try await catalog.createToken(namespace: "", role: .platform, name: "test-platform", secretDigest: platform.digest)

        var configuration = ServerConfiguration()
        if live { configuration.port = 0 }  // on loopback, the default host
        configuration.fileStoreRoots = [TestServer.fileStoreRoot]
        configuration.downloads.keys = try URLSigningKeys(parsing: testDownloadKeys)
        // A test's environments get no nightly backup because its run crossed a window; scheduler tests turn it on.
        configuration.schedule.enabled = false
        let (adminListening, adminHeard) = AsyncStream<SocketAddress>.makeStream(bufferingPolicy: .bufferingNewest(1))
        if admin { configuration.admin = AdminSettings(port: 0, onListening: { adminHeard.yield($0) }) }
        try configure(&configuration)
        var logger = Logger(label: "backupd-in-process") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        if let log { logger = log.logger() }
        let (listening, heard) = AsyncStream<SocketAddress>.makeStream(bufferingPolicy: .bufferingNewest(1))
        // Every test server serves in process; a live one also listens with TLS on a free port.
        let transport = InProcessTransport()
        let tls = TLSTransport(host: configuration.host, port: configuration.port, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                               tls: tls ?? TLSSettings(certificateChainPath: "\(projectRoot)/certs/dev/server.crt",
                                                       privateKeyPath: "\(projectRoot)/certs/dev/server.key", clientCAPath: clientCA))
        let server = try await BackupServer(configuration: configuration, transports: live ? [transport, tls] : [transport], catalog: catalog,
                                            blobStore: blobStore(try storage.open()), workDirectory: storage.directory,
                                            threadPool: jobThreads, metrics: metrics, logger: logger,
                                            onListening: { heard.yield($0) })
        let group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: logger))
        let running = Task { try await group.run() }
        var address = ""
        if live {
            guard let bound = await listening.first(where: { _ in true }), let port = bound.port else {
                throw TestSupportError("the in-process server did not start listening")
            }
            address = "127.0.0.1:\(port)"
        }
        var adminAddress = ""
        if admin {
            guard let bound = await adminListening.first(where: { _ in true }), let port = bound.port else {
                throw TestSupportError("the in-process server's admin listener did not start listening")
            }
            adminAddress = "127.0.0.1:\(port)"
        }
        return InProcessServer(storage: storage, catalogDatabase: database, catalogElsewhere: catalogCluster != nil, address: address,
                               adminAddress: adminAddress, adminToken: adminSecret.text, platformToken: platform.text, catalog: catalog,
                               server: server, metrics: metrics, leases: leases, transport: transport,
                               connections: tls.connections, group: group,
                               running: running,
                               threadPools: [catalogThreads, jobThreads], scratch: scratch)
    }

    /// Reads the server's keys and certificates again, as SIGHUP does.
    public func reload() async throws -> String {
        try await server.reload()
    }

    /// How many catalog connections the server has leased so far: what its
    /// work costs the catalog, counted as it happens (PostgreSQL's own
    /// statistics arrive seconds late).
    public var catalogLeases: Int { leases.count }

    /// How many catalog leases have had to wait, every connection being lent.
    public var catalogLeasesQueued: Int { leases.queuedCount }

    /// How many connections a live server's TLS listener holds admitted now.
    public var admittedConnections: Int { connections.admitted }

    /// A client over TLS for a live server, through the in-process transport otherwise.
    public func withClient<T: Sendable>(token: String?, _ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
        if !address.isEmpty { return try await BackupClient.withConnection(try settings(token: token), body) }
        return try await transport.withConnection { inbound, send in
            try await BackupClient.withTransport(token: token ?? adminToken, inbound: inbound, write: send, body)
        }
    }

    /// Makes the scheduler look for due nights and expired backups now.
    public func lookAtSchedulesNow() {
        server.lookAtSchedulesNow()
    }

    /// Begins a graceful shutdown, as SIGTERM does `backupd`, and returns at
    /// once; the catalog stays until `remove`.
    public func beginShutdown() async {
        await group.triggerGracefulShutdown()
    }

    /// Shuts the server down gracefully and removes its catalog and blobs.
    /// A server still running two minutes later (a job held by a gate the
    /// test never opened, a grace period on a manual clock nobody moves) is
    /// cancelled and left behind, said on standard error: the test goes on
    /// to its end rather than holding the whole run.
    public func remove() async {
        await group.triggerGracefulShutdown()
        if (try? await within(.seconds(120), { [running] in _ = try? await running.value })) == nil {
            print("the in-process server of \(catalogDatabase) did not stop within 120 s of its shutdown; cancelled and left behind")
            running.cancel()
        }
        await catalog.pool.close()
        for pool in threadPools { try? await pool.shutdownGracefully() }
        if !catalogElsewhere { await TestPostgres.dropDatabase(catalogDatabase) }  // a cluster of the test's own goes with it
        scratch.remove()
    }
}

/// Starts an in-process server (`live`: with its TLS listener, which with `clientCA` requires client certificates
/// that CA signed, and `tls` replaces the development certificate; `admin`: with its admin listener; `blobStore` may wrap the
/// configured store), runs `body`, and removes the server whatever happens.
public func withInProcessServer<T: Sendable>(live: Bool = false, admin: Bool = false, tls: TLSSettings? = nil, clientCA: String? = nil,
                                             catalogCluster: TestCluster? = nil,
                                             blobStore: (any BlobStore) -> any BlobStore = { $0 }, log: CapturedLog? = nil,
                                             configure: (inout ServerConfiguration) throws -> Void = { _ in },
                                             _ body: (InProcessServer) async throws -> T) async throws -> T {
    let server = try await InProcessServer.start(live: live, admin: admin, tls: tls, clientCA: clientCA, catalogCluster: catalogCluster,
                                                 blobStore: blobStore,
                                                 log: log, configure: configure)
    do {
        let value = try await body(server)
        await server.remove()
        return value
    } catch {
        await server.remove()
        throw error
    }
}

/// Counts the catalog's connection leases, and those that had to wait; the server's metrics hear of each too.
final class CatalogLeases: ConnectionPoolObserver {
    private let granted = Atomic(0)
    private let queued = Atomic(0)
    private let metrics: ServiceMetrics
    init(forwardingTo metrics: ServiceMetrics) { self.metrics = metrics }
    var count: Int { granted.value }
    var queuedCount: Int { queued.value }
    func leaseGranted(waited: Duration) {
        granted.update { $0 += 1 }
        metrics.leaseGranted(waited: waited)
    }
    func leaseQueued(waiting: Int) { queued.update { $0 += 1 } }
    func connectionOpened() {}
    func connectionClosed() {}
}
