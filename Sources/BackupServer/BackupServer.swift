import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// How `BackupServer` serves: its address, limits, jobs and placement rules.
/// Which transports carry its calls is the server's argument (`transports`).
public struct ServerConfiguration: Sendable {
    /// Where the TLS transport listens: the address download URLs name unless
    /// `downloads.publicURL` says otherwise.
    public var host = "127.0.0.1"
    public var port = 7443
    public var maxFrameBytes = defaultMaxFrameBytes
    public var connections = ConnectionLimits()
    public var jobs = JobSettings()
    /// The clock of every timer of the server: job polls, leases, grace
    /// periods, retries, progress, call deadlines, watches, revocation,
    /// scheduler looks, upload windows. Tests hand in a `ManualClock`.
    public var clock: any ServiceClock = ContinuousClock()
    /// Folders that environments' file stores may lie under; none refuses every file store.
    public var fileStoreRoots: [String] = []
    public var appDatabases = AppDatabasePolicy()
    public var downloads = DownloadSettings()
    public var uploads = UploadSettings()
    public var schedule = ScheduleSettings()
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, `/reload`); nil for none.
    public var admin: AdminSettings?
    /// The master keys namespaces' data keys are wrapped with: with them,
    /// each namespace's content is kept encrypted under its own key; nil
    /// keeps content as is.
    public var storageKeys: StorageKeys?
    /// The file `storageKeys` came from, read again on reload.
    public var storageKeyFile: String?

    public init() {}
}

/// The backup service as a `Service`: the TLS listener with its RPC
/// dispatch, the job runner, the scheduler and the revocation watcher, over a migrated
/// catalog, a blob store and a thread pool it is handed. Whoever runs it
/// owns the signals and how long a graceful shutdown may take: `backupd`
/// runs it in a `ServiceGroup`, tests run it in process.
public struct BackupServer: Service, CustomStringConvertible {
    /// Runs one call from its start frame to its status; what every transport serves.
    private let dispatcher: RPCDispatcher
    private let configuration: ServerConfiguration
    private let catalog: Catalog
    private let jobs: JobRunner
    private let scheduler: Scheduler
    private let downloads: DownloadEndpoint
    private let watches: JobWatches
    private let openCalls: OpenCalls
    private let transports: [any ServerTransport]
    private let metrics: ServiceMetrics
    private let readiness: ReadinessProbe
    private let links: DownloadLinks
    private let stores: NamespaceStores
    private let catalogSampler: CatalogSampler
    private let reloading = NIOLockedValueBox(false)
    private let logger: Logger
    private let onListening: @Sendable (SocketAddress) -> Void

    /// Makes the scheduler look for due nights and expired backups now, not
    /// at its next interval: for tests that live through many nights on a
    /// calendar of their own, one look per night.
    @_spi(Testing) public func lookAtSchedulesNow() {
        scheduler.wake()
    }

    /// The work folder's `tmp`, made if need be: where jobs write their scratch files.
    private static func scratchDirectory(in workDirectory: String) throws -> String {
        let folder = workDirectory + "/tmp"
        try FileSystem.makeFolders(folder)
        return folder
    }

    /// What a log line says of the service (service-lifecycle logs each service by its description): where it listens.
    public var description: String { "BackupServer(\(configuration.host):\(configuration.port))" }

    /// - Parameters:
    ///   - blobStore: where backups' content is kept.
    ///   - workDirectory: backupd's folder on this machine: jobs' scratch files (`tmp`), and unless configured
    ///     otherwise archives prepared for download (`archives`) and uploads in progress (`uploads`).
    ///   - threadPool: where blocking work of jobs runs (file hashing, blob I/O, waiting for tools);
    ///     the catalog's libpq calls run on the catalog pool's own.
    ///   - metrics: what the server counts and measures; also the catalog pool's observer, for its leases.
    ///   - onListening: hears the bound address (useful with port 0).
    public init(configuration: ServerConfiguration, transports: [any ServerTransport], catalog: Catalog, blobStore: any BlobStore,
                workDirectory: String, threadPool: NIOThreadPool, metrics: ServiceMetrics, logger: Logger,
                onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        let catalogIdentity = try await catalog.pool.withConnection(idempotent: true) { try DatabaseIdentity.of($0) }
        let stores = NamespaceStores(base: blobStore, masterKeys: configuration.storageKeys, catalog: catalog)
        try await stores.check(configuration.storageKeys)
        if let retaining = blobStore.retaining, !(try await retaining.canRetain()) {
            throw BackupError.failedPrecondition(
                "the bucket was not made with object lock, so backups cannot be retained; make a bucket with object lock enabled, "
                    + "or run without --s3-object-lock")
        }
        let archiveCache = try ArchiveCache(directory: configuration.downloads.cacheDirectory ?? workDirectory + "/archives",
                                            reservedDiskBytes: configuration.downloads.reservedDiskBytes)
        let spool = try UploadSpool(directory: configuration.uploads.directory ?? workDirectory + "/uploads", catalog: catalog, stores: stores,
                                    threadPool: threadPool, lifetime: configuration.uploads.lifetime,
                                    reservedDiskBytes: configuration.uploads.reservedDiskBytes, clock: configuration.clock)
        let scratchDirectory = try Self.scratchDirectory(in: workDirectory)
        // backupd's own folders on this machine (made by now) are no app's file store.
        let ownFolders = try ([workDirectory, archiveCache.directory, spool.directory] + [blobStore.localFolder].compactMap { $0 }).map { folder in
            guard let resolved = canonicalPath(folder) else { throw BackupError.invalidArgument("folder \(folder) cannot be resolved") }
            return resolved
        }
        let placement = Placement(
            fileStores: try FileStoreRules(roots: configuration.fileStoreRoots, reserved: ownFolders),
            databases: AppDatabases(policy: configuration.appDatabases, catalog: catalogIdentity),
            catalog: catalog, threadPool: threadPool)
        let jobs = JobRunner(catalog: catalog, stores: stores, scratchDirectory: scratchDirectory, placement: placement, archiveCache: archiveCache, spool: spool,
                             archiveGzipLevel: configuration.downloads.gzipLevel,
                             uploads: configuration.uploads, threadPool: threadPool, settings: configuration.jobs,
                             clock: configuration.clock, metrics: metrics, logger: logger)
        let scheduler = Scheduler(catalog: catalog, jobs: jobs, settings: configuration.schedule, clock: configuration.clock, logger: logger)
        let links = DownloadLinks(keys: configuration.downloads.keys, publicURL: configuration.downloads.publicURL,
                                  host: configuration.host, port: configuration.port)
        let openCalls = OpenCalls()
        var router = RPCRouter(requestTimeout: configuration.connections.partialFrameTimeout, clock: configuration.clock)
        let watches = JobWatches(catalog: catalog, clock: configuration.clock)
        BackupsService(catalog: catalog, jobs: jobs, placement: placement, openCalls: openCalls, watches: watches,
                       maxFrameBytes: configuration.maxFrameBytes, connections: configuration.connections,
                       downloads: configuration.downloads, links: links, archiveCache: archiveCache,
                       uploads: configuration.uploads, spool: spool, scheduler: scheduler).register(into: &router)
        self.dispatcher = RPCDispatcher(router: router, openCalls: openCalls, metrics: metrics, logger: logger) { secret in
            try await catalog.authenticate(secretDigest: AccessTokenSecret(presented: secret).digest)
        }
        self.downloads = DownloadEndpoint(links: links, catalog: catalog, stores: stores,
                                          limits: configuration.connections,
                                          slots: DownloadSlots(maximum: configuration.downloads.maximumStreams,
                                                               perNamespace: configuration.downloads.maximumStreamsPerNamespace),
                                          threadPool: threadPool, metrics: metrics, logger: logger)
        let refreshInterval = configuration.admin?.refreshInterval ?? AdminSettings().refreshInterval
        // The store is probed on threads jobs never hold: a process whose job threads are all busy can still take work.
        let readiness = ReadinessProbe(catalog: catalog, blobStore: blobStore, threadPool: JobRunner.collectionThreads, openCalls: openCalls,
                                       clock: configuration.clock, interval: refreshInterval)
        let catalogSampler = CatalogSampler(catalog: catalog, metrics: metrics, schedule: configuration.schedule, clock: configuration.clock,
                                            interval: refreshInterval, logger: logger)
        Self.sample(catalog: catalog, jobs: jobs, openCalls: openCalls, readiness: readiness, catalogSampler: catalogSampler, into: metrics)
        self.catalogSampler = catalogSampler
        self.metrics = metrics
        self.readiness = readiness
        self.links = links
        self.stores = stores
        self.configuration = configuration
        self.catalog = catalog
        self.jobs = jobs
        self.scheduler = scheduler
        self.watches = watches
        self.openCalls = openCalls
        self.transports = transports
        self.logger = logger
        self.onListening = { address in
            links.listening(on: address, host: configuration.host)
            onListening(address)
        }
    }

    /// The state `/metrics` reads at each scrape: the catalog's (the queue, the store, each environment's
    /// backups), and this process's (open calls, running jobs, the catalog pool, readiness).
    private static func sample(catalog: Catalog, jobs: JobRunner, openCalls: OpenCalls, readiness: ReadinessProbe,
                               catalogSampler: CatalogSampler, into metrics: ServiceMetrics) {
        let processSeries = SampledSeries(metrics: metrics)
        _ = metrics.addSampler {
            catalogSampler.sample()
            let pool = catalog.pool.usage
            processSeries.replace(with: [
                (ServiceMetrics.Name.callsOpen, [], Double(openCalls.count)),
                (ServiceMetrics.Name.jobsRunning, [], Double(jobs.runningCount)),
                (ServiceMetrics.Name.catalogConnectionsOpen, [], Double(pool.open)),
                (ServiceMetrics.Name.catalogConnectionsLeased, [], Double(pool.leased)),
                (ServiceMetrics.Name.catalogLeasesWaiting, [], Double(pool.waiting)),
            ] + readiness.problems().map { (ServiceMetrics.Name.ready, [("check", $0.check.rawValue)], $0.problem == nil ? 1 : 0) })
        }
    }

    /// Reads the download keys (`downloads.keyFile`) and each transport's
    /// certificate, key and client CA again and, when every file reads and
    /// checks, serves with them from now on: new URLs are signed by the new
    /// signer, new connections are handshaken with the new certificate,
    /// open ones keep theirs. When any fails, nothing changes. Returns what
    /// the server now serves with; throws naming the file and the problem.
    /// SIGHUP and `backupd reload` come here.
    public func reload() async throws(BackupError) -> String {
        // One at a time: reloads asked for in a loop do not pile up reading the same files.
        guard reloading.withLockedValue({ running in
            defer { running = true }
            return !running
        }) else {
            throw .aborted("a reload is already running; ask again once it has ended")
        }
        defer { reloading.withLockedValue { $0 = false } }
        do {
            var prepared: [PreparedReload] = []
            if let keyFile = configuration.downloads.keyFile {
                let keys = try URLSigningKeys(reading: keyFile)
                prepared.append(PreparedReload(summary: "download keys \(keys.keys.map(\.id).joined(separator: ", ")), signing with \(keys.signer.id)") {
                    [links] in links.keys = keys
                })
            }
            // Encryption is on or off for the process's life; a reload only changes which master keys it holds.
            if let keyFile = configuration.storageKeyFile, stores.encrypts {
                let keys = try StorageKeys(reading: keyFile)
                try await stores.check(keys)
                prepared.append(PreparedReload(summary: "storage keys \(keys.file.keys.map(\.id).joined(separator: ", ")), "
                                               + "wrapping with \(keys.file.current.id)") { [stores] in stores.masterKeys = keys })
            }
            for transport in transports {
                if let next = try transport.prepareReload() { prepared.append(next) }
            }
            prepared.forEach { $0.apply() }
            let summary = "reloaded: " + (prepared.isEmpty ? "nothing to read" : prepared.map(\.summary).joined(separator: "; "))
            logger.info("reloaded", metadata: ["serving": "\(prepared.map(\.summary).joined(separator: "; "))"])
            return summary
        } catch {
            logger.error("reload failed: the keys and certificates in use stay", metadata: ["error": "\(error.description)"])
            throw error
        }
    }

    /// Serves until a graceful shutdown: new calls are refused at once and
    /// the port closes; running jobs get their grace period.
    public func run() async throws {
        let endpoints = ServedEndpoints(dispatcher: dispatcher, downloads: downloads, limits: configuration.connections,
                                        maxFrameBytes: configuration.maxFrameBytes, metrics: metrics, logger: logger, onListening: onListening)
        let admin = configuration.admin.map {
            AdminListener(settings: $0, metrics: metrics, readiness: readiness, reload: reload,
                          eventLoopGroup: MultiThreadedEventLoopGroup.singleton, logger: logger)
        }
        let group = ServiceGroup(configuration: .init(
            // Shut down last to first: the listener stops taking calls at once, then jobs get their grace period; the
            // admin listener answers (that the server is draining) until the end.
            services: (admin.map { [.init(service: $0), .init(service: readiness), .init(service: catalogSampler)] } ?? []) + [
                .init(service: jobs),
                .init(service: scheduler),
                .init(service: RevocationService(openCalls: openCalls, catalog: catalog, clock: configuration.clock)),
                .init(service: JobChangeListener(catalog: catalog, watches: watches, jobs: jobs)),
                .init(service: TransportService(transports: transports, endpoints: endpoints, openCalls: openCalls, jobs: jobs)),
            ],
            logger: logger))
        try await group.run()
    }
}

/// The server's transports. Shutdown reaches them first: new calls are
/// refused with UNAVAILABLE and the job runner stops claiming at once, while
/// each transport stops taking connections (a listener closes its port) and
/// ends the ones it has.
private struct TransportService: Service {
    let transports: [any ServerTransport]
    let endpoints: ServedEndpoints
    let openCalls: OpenCalls
    let jobs: JobRunner
    func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                for transport in transports {
                    group.addTask { try await transport.serve(endpoints) }
                }
                // A server with no transport of its own waits for its shutdown all the same.
                group.addTask { try? await gracefulShutdown() }
            }
        } onGracefulShutdown: {
            openCalls.beginDraining()
            jobs.beginShutdown()
        }
    }
}

/// Hears the catalog's job notifications (one listening connection per
/// process) and tells the watches and the runner, which looks for a cancel.
private struct JobChangeListener: Service {
    let catalog: Catalog
    let watches: JobWatches
    let jobs: JobRunner
    func run() async {
        await cancelWhenGracefulShutdown {
            await catalog.listenForJobChanges { jobID in
                watches.changed(jobID)
                jobs.jobChanged(jobID)
            }
        }
    }
}

/// Ends the open calls of tokens that another backupd process revoked.
private struct RevocationService: Service {
    let openCalls: OpenCalls
    let catalog: Catalog
    let clock: any ServiceClock
    func run() async throws {
        do {
            try await cancelWhenGracefulShutdown { try await openCalls.endRevoked(using: catalog, every: .seconds(5), clock: clock) }
        } catch is CancellationError {}
    }
}
