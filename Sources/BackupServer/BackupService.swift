import BackupCatalog
import BackupCore
import BackupPostgres
import BackupWire
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Everything `backupd serve` needs to know.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 7443
    public var tls: TLSSettings
    public var catalogURL: String
    public var blobDirectory: String
    public var maxFrameBytes = defaultMaxFrameBytes
    public var connections = ConnectionLimits()
    public var jobs = JobSettings()
    /// Folders that environments' file stores may lie under; none refuses every file store.
    public var fileStoreRoots: [String] = []
    public var appDatabases = AppDatabasePolicy()

    public init(tls: TLSSettings, catalogURL: String, blobDirectory: String) {
        self.tls = tls
        self.catalogURL = catalogURL
        self.blobDirectory = blobDirectory
    }
}

/// The running server: the catalog (migrated at start), the TLS listener
/// with its RPC dispatch, and the job runner, under one service group that
/// shuts down gracefully on SIGTERM or SIGINT.
public struct BackupService: Sendable {
    let configuration: ServerConfiguration
    let logger: Logger

    public init(configuration: ServerConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Serves until a signal asks it to stop. `onListening` hears the bound
    /// address (useful with port 0).
    public func run(onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        let threadPool = NIOThreadPool(numberOfThreads: 16)
        threadPool.start()
        do {
            try await serve(threadPool: threadPool, onListening: onListening)
            try await threadPool.shutdownGracefully()
        } catch {
            try? await threadPool.shutdownGracefully()
            throw error
        }
    }

    private func serve(threadPool: NIOThreadPool, onListening: @escaping @Sendable (SocketAddress) -> Void) async throws {
        let catalog = Catalog(connectionString: configuration.catalogURL, maximumConnections: 12, threadPool: threadPool)
        try await catalog.migrate()
        let catalogIdentity = try await catalog.pool.withConnection { try DatabaseIdentity.of($0) }
        let blobStore = try LocalBlobStore(root: configuration.blobDirectory)
        guard let blobRoot = canonicalPath(configuration.blobDirectory) else {
            throw BackupError.invalidArgument("blob store \(configuration.blobDirectory) cannot be resolved")
        }
        let placement = Placement(
            fileStores: try FileStoreRules(roots: configuration.fileStoreRoots, reserved: [blobRoot]),
            databases: AppDatabases(policy: configuration.appDatabases, catalog: catalogIdentity),
            catalog: catalog, threadPool: threadPool)
        let jobs = JobRunner(catalog: catalog, blobStore: blobStore, placement: placement, threadPool: threadPool,
                             settings: configuration.jobs, logger: logger)

        let openCalls = OpenCalls()
        var router = RPCRouter()
        BackupsService(catalog: catalog, jobs: jobs, placement: placement, openCalls: openCalls, watches: JobWatches(catalog: catalog),
                       maxFrameBytes: configuration.maxFrameBytes, connections: configuration.connections).register(into: &router)
        let dispatcher = RPCDispatcher(router: router, openCalls: openCalls, logger: logger) { secret in
            try await catalog.authenticate(secret: secret)
        }
        let listener = TLSListener(
            host: configuration.host, port: configuration.port, tls: configuration.tls,
            maxFrameBytes: configuration.maxFrameBytes, limits: configuration.connections, dispatcher: dispatcher,
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger, onListening: onListening)

        let group = ServiceGroup(configuration: .init(
            // Shut down last to first: the listener stops taking calls at once, then jobs get their grace period.
            services: [
                .init(service: jobs),
                .init(service: RevocationService(openCalls: openCalls, catalog: catalog)),
                .init(service: ListenerService(listener: listener, openCalls: openCalls, jobs: jobs)),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
        await catalog.pool.close()
    }
}

/// The TLS listener. Shutdown reaches it first: new calls are refused with
/// UNAVAILABLE and the job runner stops claiming at once, while the listener
/// closes its port and ends its connections.
private struct ListenerService: Service {
    let listener: TLSListener
    let openCalls: OpenCalls
    let jobs: JobRunner
    func run() async throws {
        try await withGracefulShutdownHandler {
            try await listener.run()
        } onGracefulShutdown: {
            openCalls.beginDraining()
            jobs.beginShutdown()
        }
    }
}

/// Ends the open calls of tokens that another backupd process revoked.
private struct RevocationService: Service {
    let openCalls: OpenCalls
    let catalog: Catalog
    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await openCalls.endRevoked(using: catalog, every: .seconds(5)) }
        } catch is CancellationError {}
    }
}
