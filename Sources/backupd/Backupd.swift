import ArgumentParser
import AsyncHTTPClient
import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import BackupWire
import CMalloc
import Foundation
import Logging
import NIOPosix
import NIOCore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The server executable: configuration and wiring only.
@main
struct Backupd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backupd",
        abstract: "Backup and restore for apps made of a PostgreSQL database and file documents.",
        version: "backupd \(BuildInfo.description)",
        subcommands: [Serve.self, TokenCommand.self, ReloadCommand.self],
        defaultSubcommand: Serve.self)
}

/// An option's value, else its environment variable's, else `fallback`.
/// Options never take their environment variable as a declared default,
/// so `--help` never prints a secret it found there.
private func value(_ option: String?, _ variable: String, _ fallback: String = "") -> String {
    option ?? ProcessInfo.processInfo.environment[variable] ?? fallback
}

/// Options every subcommand that reaches the catalog shares.
struct CatalogOptions: ParsableArguments {
    @Option(name: .customLong("catalog"), help: "libpq connection string of the catalog database (env BACKUPD_CATALOG).")
    var catalogOption: String?

    var catalog: String { value(catalogOption, "BACKUPD_CATALOG") }

    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("--catalog (or BACKUPD_CATALOG) is required") }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the RPC API over TLS and run backup jobs.")

    @OptionGroup var catalogOptions: CatalogOptions

    @Option(name: .customLong("listen"), help: "Address to listen on, HOST:PORT, default 127.0.0.1:7443; port 0 picks a free one (env BACKUPD_LISTEN).")
    var listenOption: String?
    var listen: String { value(listenOption, "BACKUPD_LISTEN", "127.0.0.1:7443") }

    @Option(name: .customLong("blob-dir"),
            help: "Folder of the blob store; with --blob-store, of this process's work files only (env BACKUPD_BLOB_DIR).")
    var blobDirOption: String?
    var blobDir: String { value(blobDirOption, "BACKUPD_BLOB_DIR") }

    @Option(name: .customLong("blob-store"),
            help: "Keep blobs in an S3-compatible bucket, s3://BUCKET/PREFIX, instead of --blob-dir (env BACKUPD_BLOB_STORE).")
    var blobStoreOption: String?
    var blobStoreURL: String { value(blobStoreOption, "BACKUPD_BLOB_STORE") }

    @Option(name: .customLong("s3-endpoint"),
            help: "URL of the S3-compatible service, e.g. http://minio:9000 (default: AWS's for --s3-region) (env BACKUPD_S3_ENDPOINT).")
    var s3EndpointOption: String?

    @Option(name: .customLong("s3-region"), help: "Region requests are signed for (default us-east-1; env BACKUPD_S3_REGION or AWS_REGION).")
    var s3RegionOption: String?

    @Flag(help: "Name the bucket in the path (http://host/bucket/key, as MinIO and Ceph take it) rather than in the host name.")
    var s3PathStyle = false

    @Option(name: .customLong("s3-access-key-id"), help: "Access key id of the store (env AWS_ACCESS_KEY_ID; its secret: AWS_SECRET_ACCESS_KEY).")
    var s3AccessKeyIDOption: String?

    @Option(help: "File with the store's credentials in AWS's format (aws_access_key_id, aws_secret_access_key, aws_session_token).")
    var s3CredentialsFile: String?

    @Option(help: "Size of the parts large blobs are sent in, MiB (at least 5, default 8).")
    var s3PartSizeMib = 8

    @Option(help: "Parts of one blob sent at once (default 3).")
    var s3PartsInFlight = 3

    @Option(help: "Connections to the object store at once (default 32).")
    var s3Connections = 32

    @Option(help: "Seconds one request to the object store may take (default 60).")
    var s3RequestTimeoutSeconds = 60

    @Option(name: .customLong("cert"), help: "PEM certificate chain of the server (env BACKUPD_TLS_CERT).")
    var certOption: String?
    var cert: String { value(certOption, "BACKUPD_TLS_CERT") }

    @Option(name: .customLong("key"), help: "PEM private key of the server (env BACKUPD_TLS_KEY).")
    var keyOption: String?
    var key: String { value(keyOption, "BACKUPD_TLS_KEY") }

    @Option(name: .customLong("client-ca"), help: "Require client certificates signed by this CA (mutual TLS) (env BACKUPD_TLS_CLIENT_CA).")
    var clientCAOption: String?
    var clientCA: String { value(clientCAOption, "BACKUPD_TLS_CLIENT_CA") }

    @Option(name: .customLong("file-store-root"),
            help: "A folder that environments' file stores may lie under (repeatable); with none, no file store is accepted.")
    var fileStoreRoots: [String] = []

    @Option(name: [.customLong("app-database-hosts"), .customLong("app-database-host")],
            help: "Hosts that app databases may be on, comma-separated (repeatable); with none, any TCP host.")
    var appDatabaseHostLists: [String] = []
    var appDatabaseHosts: [String] {
        appDatabaseHostLists.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
    }

    @Flag(help: "Allow app database URLs that name a Unix-domain socket (where the server may trust backupd's OS user).")
    var allowSocketAppDatabases = false

    @Option(help: "Most file documents one backup may hold: the file query's row cap.")
    var maxFilesPerBackup = AppDatabasePolicy().maximumFilesPerBackup

    @Option(help: "Seconds the file query of one backup may run.")
    var fileQueryTimeoutSeconds = 60

    @Option(help: "Largest frame accepted, in bytes.")
    var maxFrameBytes = defaultMaxFrameBytes

    @Option(help: "Seconds a client may take to finish its TLS handshake.")
    var handshakeTimeoutSeconds = 10

    @Option(help: "Seconds from the handshake to a connection's first call that authenticates before it is closed.")
    var authenticationTimeoutSeconds = 10

    @Option(help: "Seconds from a frame's first byte to its last before the connection is closed.")
    var partialFrameTimeoutSeconds = 30

    @Option(help: "Seconds a connection may stay open with no call before it is closed.")
    var idleConnectionTimeoutSeconds = 300

    @Option(help: "Connections open at once; more are closed as they arrive (also bounded by the descriptor limit).")
    var maxConnections = ConnectionLimits().maximumConnections

    @Option(help: "Connections open at once from one client address.")
    var maxConnectionsPerPeer = ConnectionLimits().maximumConnectionsPerPeer

    @Option(help: "Bytes of received frames that all connections together may hold beyond their own 64 KiB windows (default 16 MiB); past it they stop reading.")
    var sharedReceiveBytes = ConnectionLimits().sharedReceiveBytes

    @Option(help: "Of --shared-receive-bytes, what the connections of one client address may hold (at least --max-frame-bytes).")
    var sharedReceiveBytesPerPeer = ConnectionLimits().sharedReceiveBytesPerPeer

    @Option(help: "Jobs run at once by this process; 0 for a process that only serves the API (other processes on the catalog run its jobs).")
    var maxJobs = 2

    @Option(help: "The share of the job slots one namespace may hold at once (at least one slot).")
    var namespaceJobShare = JobSettings().namespaceShare.fraction

    @Option(help: "On SIGTERM, seconds running jobs may go on before they are cancelled.")
    var shutdownGraceSeconds = 30

    @Option(help: "Seconds a connection to an app database may take to open.")
    var appDatabaseConnectTimeoutSeconds = AppDatabasePolicy().connectTimeoutSeconds

    @Option(help: "Seconds a restore keeps trying to rename or drop an app database that is in use (autovacuum, a session it may end) before it fails naming the session.")
    var databaseTakeoverSeconds = 30

    @Option(help: "Seconds a job's lease lasts; a job whose process stops renewing it is failed after this.")
    var jobLeaseSeconds = 30

    @Option(name: .customLong("pg-dump"), help: "pg_dump to run, default /usr/bin/pg_dump (env BACKUPD_PG_DUMP).")
    var pgDumpOption: String?
    var pgDump: String { value(pgDumpOption, "BACKUPD_PG_DUMP", "/usr/bin/pg_dump") }

    @Option(name: .customLong("pg-restore"), help: "pg_restore to run, default /usr/bin/pg_restore (env BACKUPD_PG_RESTORE).")
    var pgRestoreOption: String?
    var pgRestore: String { value(pgRestoreOption, "BACKUPD_PG_RESTORE", "/usr/bin/pg_restore") }

    @Option(help: "Seconds pg_dump or pg_restore may go without progress (dump size, restored database size) before the job is stopped.")
    var toolStallSeconds = 600

    @Option(help: "Parallel workers of one pg_restore (default: the number of cores).")
    var restoreJobs = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "zstd level of new dump chunks, 1 (fast, default) to 19 (smallest).")
    var dumpCompressionLevel = 1

    @Flag(help: "Drop a restored environment's previous database and files at once, instead of keeping them until its next restore.")
    var dropPreviousOnRestore = false

    @Option(help: ArgumentHelp("Fault injection for recovery tests: die right after a restore records this step.", visibility: .private))
    var dieAfterRestoreStep: String?

    @Option(name: .customLong("download-keys"),
            help: "File of the keys that sign download URLs, a KEY_ID = BASE64_SECRET line each, newest last (env BACKUPD_DOWNLOAD_KEYS); without it downloads are refused.")
    var downloadKeysOption: String?
    var downloadKeys: String { value(downloadKeysOption, "BACKUPD_DOWNLOAD_KEYS") }

    @Option(help: "Seconds a download URL works, from when its archive is ready (default 8 hours).")
    var downloadURLLifetimeSeconds = 8 * 3600

    @Option(help: "Folder where archives wait for their downloads (default: BLOB_DIR/archives).")
    var archiveCache: String?

    @Option(help: "Bytes all prepared archives together may take (default 20 GiB); a download past it is refused with RESOURCE_EXHAUSTED.")
    var archiveCacheBytes: UInt64 = DownloadSettings().cacheBytes

    @Option(help: "Downloads streaming at once (default 128); more are answered 503 with Retry-After.")
    var maxDownloads = DownloadSettings().maximumStreams

    @Option(help: "Downloads of one namespace streaming at once (default 32).")
    var maxDownloadsPerNamespace = DownloadSettings().maximumStreamsPerNamespace

    @Option(help: "gzip level of full archives, 0 (stored: for files that do not compress) to 9 (default 6).")
    var archiveGzipLevel = DownloadSettings().gzipLevel

    @Option(help: "Scheme, host and port that download URLs start with, e.g. https://backups.example.com:7443 (default: the listen address).")
    var publicURL: String?

    @Option(help: "Folder where uploads are received (default: BLOB_DIR/uploads).")
    var uploadDir: String?

    @Option(help: "Largest upload accepted, in bytes (default 200 GiB).")
    var maxUploadBytes: UInt64 = UploadSettings().maximumBytes

    @Option(help: "Bytes all unfinished uploads together may announce (default 200 GiB); one namespace's may announce half.")
    var uploadSpoolBytes: UInt64 = UploadSettings().spoolBytes

    @Option(help: "Seconds an upload may go without a chunk before it is abandoned and its data removed (default 24 hours).")
    var uploadLifetimeSeconds = 24 * 3600

    @Option(help: "Members an uploaded archive may hold (default: --max-files-per-backup documents, .metadata and the dump).")
    var uploadMaxMembers: Int?

    @Option(help: "Bytes a second an upload must receive on average over each --upload-rate-window-seconds, or it expires (default 1024).")
    var uploadMinimumRateBytes: UInt64 = UploadSettings().minimumRate

    @Option(help: "Seconds over which an upload's rate is measured (default 6 hours).")
    var uploadRateWindowSeconds = Int(UploadSettings().rateWindow.components.seconds)

    @Option(help: "Largest member of an uploaded archive, in bytes (default 100 GiB).")
    var uploadMaxMemberBytes = SnapshotArchiveReader.Limits().memberBytes

    @Option(help: "Bytes an uploaded archive's members may expand to together (default 500 GiB).")
    var uploadMaxExpandedBytes = SnapshotArchiveReader.Limits().expandedBytes

    @Option(help: "Times its compressed size an uploaded archive may expand to, past its first 64 MiB (default 200).")
    var uploadMaxExpansionRatio = SnapshotArchiveReader.Limits().expansionRatio

    @Flag(inversion: .prefixedNo,
          help: "Make each environment's nightly backups and delete expired backups (on by default; every process on a catalog may).")
    var scheduler = true

    @Option(help: "Seconds between the scheduler's looks for due nights and expired backups (default 30).")
    var scheduleIntervalSeconds = 30

    @Option(help: "Minutes after a window's start over which environments' nightly backups are spread (default 60).")
    var scheduleSpreadMinutes = 60

    @Option(help: "Seconds before a failed nightly backup's second and third attempts, comma-separated (default 300,1200).")
    var nightlyRetrySeconds = "300,1200"

    @Option(help: ArgumentHelp("For tests of the scheduler: seconds its clock runs ahead of the real one.", visibility: .private))
    var scheduleClockOffsetSeconds: Double = 0

    @Option(name: .customLong("admin-listen"),
            help: "Address of the admin listener (plain HTTP: /metrics, /healthz, /readyz, POST /reload), HOST:PORT, default 127.0.0.1:7444; off for none (env BACKUPD_ADMIN_LISTEN).")
    var adminListenOption: String?
    var adminListen: String { value(adminListenOption, "BACKUPD_ADMIN_LISTEN", "127.0.0.1:7444") }

    @Option(help: "Once listening, write HOST:PORT to this file, and on a second line \"admin HOST:PORT\" of the admin listener.")
    var readyFile: String?

    @Option(name: .customLong("log-level"), help: "Log level: trace, debug, info (default), notice, warning, error (env BACKUPD_LOG_LEVEL).")
    var logLevelOption: String?
    var logLevel: String { value(logLevelOption, "BACKUPD_LOG_LEVEL", "info") }

    @Option(name: .customLong("log-format"),
            help: "Log lines as text (default) or json, one object per line for log shippers (env BACKUPD_LOG_FORMAT).")
    var logFormatOption: String?
    var logFormat: String { value(logFormatOption, "BACKUPD_LOG_FORMAT", "text") }

    func validate() throws {
        guard !blobDir.isEmpty else { throw ValidationError("--blob-dir (or BACKUPD_BLOB_DIR) is required") }
        guard maxJobs >= 0 else { throw ValidationError("--max-jobs may not be negative (0: this process serves the API and runs no job)") }
        guard (5...5 << 10).contains(s3PartSizeMib) else { throw ValidationError("--s3-part-size-mib takes 5 to 5120 (S3's limits of a part)") }
        guard !cert.isEmpty, !key.isEmpty else { throw ValidationError("--cert and --key (or BACKUPD_TLS_CERT, BACKUPD_TLS_KEY) are required") }
        guard Self.hostAndPort(listen) != nil else { throw ValidationError("--listen \"\(listen)\" is not HOST:PORT") }
        guard adminListen == "off" || Self.hostAndPort(adminListen) != nil else {
            throw ValidationError("--admin-listen \"\(adminListen)\" is neither HOST:PORT nor off")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \"\(logLevel)\" is not a log level") }
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format \"\(logFormat)\" is neither text nor json") }
        let counts = [
            ("--restore-jobs", restoreJobs), ("--job-lease-seconds", jobLeaseSeconds), ("--max-files-per-backup", maxFilesPerBackup),
            ("--file-query-timeout-seconds", fileQueryTimeoutSeconds),
            ("--s3-parts-in-flight", s3PartsInFlight), ("--s3-connections", s3Connections), ("--s3-request-timeout-seconds", s3RequestTimeoutSeconds),
            ("--handshake-timeout-seconds", handshakeTimeoutSeconds), ("--authentication-timeout-seconds", authenticationTimeoutSeconds),
            ("--partial-frame-timeout-seconds", partialFrameTimeoutSeconds),
            ("--idle-connection-timeout-seconds", idleConnectionTimeoutSeconds), ("--max-connections", maxConnections),
            ("--max-connections-per-peer", maxConnectionsPerPeer), ("--tool-stall-seconds", toolStallSeconds),
            ("--app-database-connect-timeout-seconds", appDatabaseConnectTimeoutSeconds),
            ("--database-takeover-seconds", databaseTakeoverSeconds), ("--max-frame-bytes", maxFrameBytes),
            ("--download-url-lifetime-seconds", downloadURLLifetimeSeconds), ("--max-downloads", maxDownloads),
            ("--max-downloads-per-namespace", maxDownloadsPerNamespace), ("--upload-lifetime-seconds", uploadLifetimeSeconds),
            ("--upload-max-members", uploadMaxMembers ?? 1), ("--upload-rate-window-seconds", uploadRateWindowSeconds), ("--upload-max-member-bytes", Int(clamping: uploadMaxMemberBytes)),
            ("--upload-max-expanded-bytes", Int(clamping: uploadMaxExpandedBytes)),
            ("--upload-max-expansion-ratio", Int(clamping: uploadMaxExpansionRatio)),
            ("--schedule-interval-seconds", scheduleIntervalSeconds), ("--schedule-spread-minutes", scheduleSpreadMinutes + 1),
        ]
        if let (flag, _) = counts.first(where: { $0.1 < 1 }) { throw ValidationError("\(flag) must be at least 1") }
        guard (1...19).contains(dumpCompressionLevel) else { throw ValidationError("--dump-compression-level must be 1 to 19") }
        // A frame that may never fit in what its client can borrow would wait forever.
        guard sharedReceiveBytesPerPeer >= maxFrameBytes, sharedReceiveBytes >= sharedReceiveBytesPerPeer else {
            throw ValidationError("--shared-receive-bytes-per-peer must be at least --max-frame-bytes, and --shared-receive-bytes at least that")
        }
        guard shutdownGraceSeconds >= 0 else { throw ValidationError("--shutdown-grace-seconds may not be negative") }
        guard NamespaceShare(namespaceJobShare) != nil else {
            throw ValidationError("--namespace-job-share must be above 0 and at most 1")
        }
        guard (0...9).contains(archiveGzipLevel) else { throw ValidationError("--archive-gzip-level must be 0 to 9") }
        if let publicURL, !(publicURL.hasPrefix("https://") && publicURL.count > 8 && !publicURL.contains("?")) {
            throw ValidationError("--public-url \"\(publicURL)\" is not an https:// origin")
        }
        if let step = dieAfterRestoreStep, RestoreStep(rawValue: step) == nil {
            throw ValidationError("--die-after-restore-step \"\(step)\" is not one of " + RestoreStep.allCases.map(\.rawValue).joined(separator: ", "))
        }
    }

    private static func hostAndPort(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        return (String(address[..<colon]), port)
    }

    /// Raises the open-descriptor limit to its hard limit and returns how
    /// many connections fit under it, keeping a reserve for the catalog,
    /// jobs, their tools and files.
    static func descriptorsForConnections(reserve: Int = 256) -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return reserve }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return max(16, Int(clamping: limit.rlim_cur) - reserve)
    }

    func run() async throws {
        // What backupd writes (blobs, scratch files) is its own; restored files get their store's owner and mode explicitly.
        umask(0o077)
        // Buffers of a MiB and more (object-store parts and ranges, upload chunks) are mapped and unmapped whole. By
        // default glibc raises this threshold to the largest buffer freed, after which 8 MiB parts come from per-thread
        // arenas that keep them: a 1 GiB upload through S3 grew the server by 217 MiB so, by 50 MiB with it fixed.
        // MALLOC_MMAP_THRESHOLD_ in the environment still wins.
        if ProcessInfo.processInfo.environment["MALLOC_MMAP_THRESHOLD_"] == nil { mallopt(M_MMAP_THRESHOLD, 1 << 20) }
        // From here on no PG* variable of backupd's can reach an app database or pg_dump.
        let catalogURL = try ConnectionString.absorbingEnvironment(catalogOptions.catalog)
        let level = Logger.Level(rawValue: logLevel)!
        let json = logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let (host, port) = Self.hostAndPort(listen)!
        var configuration = ServerConfiguration()
        configuration.host = host
        configuration.port = port
        configuration.admin = Self.hostAndPort(adminListen).map { AdminSettings(host: $0.0, port: $0.1) }
        configuration.maxFrameBytes = maxFrameBytes
        configuration.connections.handshakeTimeout = .seconds(handshakeTimeoutSeconds)
        configuration.connections.authenticationTimeout = .seconds(authenticationTimeoutSeconds)
        configuration.connections.partialFrameTimeout = .seconds(partialFrameTimeoutSeconds)
        configuration.connections.idleTimeout = .seconds(idleConnectionTimeoutSeconds)
        configuration.connections.maximumConnections = min(maxConnections, Self.descriptorsForConnections())
        configuration.connections.maximumConnectionsPerPeer = maxConnectionsPerPeer
        configuration.connections.sharedReceiveBytes = sharedReceiveBytes
        configuration.connections.sharedReceiveBytesPerPeer = sharedReceiveBytesPerPeer
        configuration.jobs.maximumConcurrentJobs = maxJobs
        configuration.jobs.namespaceShare = NamespaceShare(namespaceJobShare)!
        configuration.jobs.shutdownGrace = .seconds(shutdownGraceSeconds)
        configuration.appDatabases.connectTimeoutSeconds = appDatabaseConnectTimeoutSeconds
        configuration.appDatabases.takeoverTimeout = .seconds(databaseTakeoverSeconds)
        configuration.jobs.tools.pgDump = pgDump
        configuration.jobs.tools.pgRestore = pgRestore
        configuration.jobs.tools.stallTimeout = .seconds(toolStallSeconds)
        configuration.jobs.restoreParallelism = restoreJobs
        configuration.jobs.dumpCompressionLevel = dumpCompressionLevel
        configuration.jobs.keepPreviousOnRestore = !dropPreviousOnRestore
        configuration.jobs.dieAfterRestoreStep = dieAfterRestoreStep.flatMap(RestoreStep.init(rawValue:))
        configuration.jobs.leaseSeconds = jobLeaseSeconds
        configuration.fileStoreRoots = fileStoreRoots
        configuration.appDatabases.allowedHosts = appDatabaseHosts
        configuration.appDatabases.allowSocketHosts = allowSocketAppDatabases
        configuration.appDatabases.maximumFilesPerBackup = maxFilesPerBackup
        configuration.appDatabases.fileQueryTimeout = "\(fileQueryTimeoutSeconds)s"
        if !downloadKeys.isEmpty {
            do {
                configuration.downloads.keys = try URLSigningKeys(reading: downloadKeys)
                configuration.downloads.keyFile = downloadKeys
            } catch {
                throw ValidationError("--download-keys: \(error)")
            }
        }
        configuration.downloads.urlLifetime = .seconds(downloadURLLifetimeSeconds)
        configuration.downloads.cacheDirectory = archiveCache
        configuration.downloads.cacheBytes = archiveCacheBytes
        configuration.downloads.publicURL = publicURL
        configuration.downloads.gzipLevel = archiveGzipLevel
        configuration.downloads.maximumStreams = maxDownloads
        configuration.downloads.maximumStreamsPerNamespace = maxDownloadsPerNamespace
        configuration.uploads.directory = uploadDir
        configuration.uploads.maximumBytes = maxUploadBytes
        configuration.uploads.spoolBytes = uploadSpoolBytes
        configuration.uploads.lifetime = .seconds(uploadLifetimeSeconds)
        configuration.uploads.archiveLimits.members = uploadMaxMembers ?? maxFilesPerBackup + 2
        configuration.uploads.minimumRate = uploadMinimumRateBytes
        configuration.uploads.rateWindow = .seconds(uploadRateWindowSeconds)
        configuration.uploads.archiveLimits.memberBytes = uploadMaxMemberBytes
        configuration.uploads.archiveLimits.expandedBytes = uploadMaxExpandedBytes
        configuration.uploads.archiveLimits.expansionRatio = uploadMaxExpansionRatio
        configuration.schedule.enabled = scheduler
        configuration.schedule.interval = .seconds(scheduleIntervalSeconds)
        configuration.schedule.spread = .seconds(scheduleSpreadMinutes * 60)
        let retryDelays = nightlyRetrySeconds.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard retryDelays.count == NightlyWindow.attempts - 1, retryDelays.allSatisfy({ ($0 ?? -1) >= 0 }) else {
            throw ValidationError("--nightly-retry-seconds takes \(NightlyWindow.attempts - 1) numbers of seconds, comma-separated")
        }
        configuration.schedule.retryDelays = retryDelays.map { .seconds($0!) }
        let clockOffset = scheduleClockOffsetSeconds
        if clockOffset != 0 { configuration.schedule.clock = { Date().addingTimeInterval(clockOffset) } }
        let readyFile = ReadyFile(path: readyFile, admin: configuration.admin != nil)
        configuration.admin?.onListening = { readyFile.bound($0, admin: true) }
        let logger = Logger(label: "backupd")
        // The catalog's libpq calls have threads of their own, one per connection (the pool's, the job-change
        // listener's and each running job's blob lock), so bulk work of jobs (hashing files, copying blobs)
        // never queues a call's authentication.
        let catalogThreads = NIOThreadPool(numberOfThreads: Self.catalogConnections + 1 + maxJobs)
        let jobThreads = NIOThreadPool(numberOfThreads: 16)
        catalogThreads.start()
        jobThreads.start()
        defer {
            catalogThreads.shutdownGracefully { _ in }
            jobThreads.shutdownGracefully { _ in }
        }
        // The object store's settings are checked before its HTTP client exists: once made, it must be shut down.
        let objectStore = try objectStoreSettings()
        let objectStoreHTTP = objectStore.map { _ in
            HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                       configuration: .init(connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: s3Connections)))
        }
        do {
            let blobStore = try makeBlobStore(objectStore, http: objectStoreHTTP)
            let metrics = ServiceMetrics()
            let catalog = Catalog(connectionString: catalogURL, maximumConnections: Self.catalogConnections, threadPool: catalogThreads,
                                  observer: metrics)
            try await catalog.migrate()
            let server = try await BackupServer(
                configuration: configuration,
                transports: [TLSTransport(host: host, port: port, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                                          tls: TLSSettings(certificateChainPath: cert, privateKeyPath: key,
                                                           clientCAPath: clientCA.isEmpty ? nil : clientCA))],
                catalog: catalog, blobStore: blobStore, workDirectory: blobDir, threadPool: jobThreads, metrics: metrics,
                logger: logger
            ) { address in
                readyFile.bound(address, admin: false)
            }
            var group = ServiceGroupConfiguration(services: [.init(service: server), .init(service: ReloadOnHangup(server: server))],
                                                  gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            // Past the jobs' grace period and a margin for recording how they ended, whatever still runs is cancelled.
            group.maximumGracefulShutdownDuration = .seconds(shutdownGraceSeconds) + Self.shutdownMargin
            try await ServiceGroup(configuration: group).run()
            await catalog.pool.close()
        } catch {
            try? await objectStoreHTTP?.shutdown()
            throw error
        }
        try? await objectStoreHTTP?.shutdown()
    }

    /// The object store's location and credentials, checked; nil for the local folder.
    private func objectStoreSettings() throws -> (ObjectStoreLocation, ObjectStoreCredentials)? {
        guard !blobStoreURL.isEmpty else { return nil }
        let environment = ProcessInfo.processInfo.environment
        do {
            let location = try ObjectStoreSettings.location(
                url: blobStoreURL, endpoint: value(s3EndpointOption, "BACKUPD_S3_ENDPOINT"),
                region: s3RegionOption ?? environment["BACKUPD_S3_REGION"] ?? environment["AWS_REGION"] ?? "us-east-1", pathStyle: s3PathStyle)
            let credentials = try ObjectStoreSettings.credentials(
                file: s3CredentialsFile, accessKeyID: s3AccessKeyIDOption ?? environment["AWS_ACCESS_KEY_ID"],
                secretAccessKey: environment["AWS_SECRET_ACCESS_KEY"], sessionToken: environment["AWS_SESSION_TOKEN"])
            return (location, credentials)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// The local folder, or the object store (its streamed content staged in
    /// the work folder's scratch, which the job runner sweeps of what dead
    /// jobs left).
    private func makeBlobStore(_ objectStore: (ObjectStoreLocation, ObjectStoreCredentials)?, http: HTTPClient?) throws -> any BlobStore {
        guard let (location, credentials) = objectStore, let http else { return try LocalBlobStore(root: blobDir) }
        do {
            var client = try ObjectStoreClient(location: location, credentials: credentials, http: http)
            client.requestTimeout = .seconds(Int64(s3RequestTimeoutSeconds))
            return try ObjectBlobStore(client: client, scratchDirectory: blobDir + "/tmp", partSize: s3PartSizeMib << 20,
                                       partsInFlight: s3PartsInFlight)
        } catch let error as ObjectStoreError {
            throw ValidationError(error.description)
        }
    }

    /// Connections (and threads) of the catalog pool.
    static let catalogConnections = 12
    /// How long a graceful shutdown may go on past the jobs' grace period.
    static let shutdownMargin: Duration = .seconds(15)
}

/// SIGHUP reloads the download keys and TLS files (`BackupServer.reload`), as systemd's `ExecReload` sends it.
private struct ReloadOnHangup: Service {
    let server: BackupServer

    func run() async {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in hangups {
                _ = try? await server.reload()  // it logs what it reloaded, or why not
            }
        }
    }
}

/// Asks a running backupd, through its admin listener, to reload its keys and certificates.
struct ReloadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make a running backupd read its download keys, TLS certificate, key and client CA again (as SIGHUP does).")

    @Option(name: .customLong("admin"),
            help: "The server's admin listener, HOST:PORT (default: env BACKUPD_ADMIN_LISTEN, else 127.0.0.1:7444).")
    var adminOption: String?

    func run() async throws {
        let admin = value(adminOption, "BACKUPD_ADMIN_LISTEN", "127.0.0.1:7444")
        var request = HTTPClientRequest(url: "http://\(admin)/reload")
        request.method = .POST
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        } catch {
            throw ValidationError("cannot reach backupd's admin listener at \(admin) (--admin, BACKUPD_ADMIN_LISTEN): \(error)")
        }
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard response.status == .ok else {
            FileHandle.standardError.write(Data(body.utf8))
            throw ExitCode(1)
        }
        print(body, terminator: "")
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage access tokens directly in the catalog (the server may be stopped).",
        subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a token and print its secret: the first admin token of a namespace, or a platform token.")

        @OptionGroup var catalogOptions: CatalogOptions
        @Option(help: "Namespace the token is bound to.") var namespace = ""
        @Option(help: "viewer, operator or admin.") var role = ""
        @Flag(help: "A platform token, for the service that places apps: it registers environments in any namespace.")
        var platform = false
        @Option(help: "Who or what uses the token.") var name = "admin"

        func validate() throws {
            if platform {
                guard namespace.isEmpty, role.isEmpty || role == "platform" else {
                    throw ValidationError("--platform takes no --namespace or --role: a platform token belongs to no namespace")
                }
            } else {
                guard !namespace.isEmpty else { throw ValidationError("--namespace is required (or --platform)") }
                guard let role = Role(name: role), role != .unspecified, role != .platform else {
                    throw ValidationError("--role must be viewer, operator or admin, not \"\(role)\" (use --platform for a platform token)")
                }
            }
        }

        func run() async throws {
            let threadPool = NIOThreadPool(numberOfThreads: 1)
            threadPool.start()
            let catalog = Catalog(connectionString: catalogOptions.catalog, maximumConnections: 1, threadPool: threadPool)
            do {
                try await catalog.migrate()
                let secret = AccessTokenSecret()
                _ = try await catalog.createToken(namespace: namespace, role: platform ? .platform : Role(name: role)!, name: name,
                                                  secretDigest: secret.digest)
                print(secret.text)
                try await threadPool.shutdownGracefully()
            } catch {
                try? await threadPool.shutdownGracefully()
                throw ValidationError("\(error)")
            }
        }
    }
}

/// `--ready-file`: written once every listener is bound, the RPC address on
/// its first line (what scripts read) and the admin listener's on a second.
final class ReadyFile: Sendable {
    private let path: String?
    private let admin: Bool
    private let bound = Mutex<(rpc: String?, admin: String?)>((nil, nil))

    init(path: String?, admin: Bool) {
        self.path = path
        self.admin = admin
    }

    func bound(_ address: SocketAddress, admin isAdmin: Bool) {
        guard let path, let ip = address.ipAddress, let port = address.port else { return }
        let text = (ip.contains(":") ? "[\(ip)]" : ip) + ":\(port)"
        let lines: String? = bound.withLock { bound in
            if isAdmin { bound.admin = text } else { bound.rpc = text }
            guard let rpc = bound.rpc, !admin || bound.admin != nil else { return nil }
            return "\(rpc)\n" + (bound.admin.map { "admin \($0)\n" } ?? "")
        }
        if let lines { try? lines.write(toFile: path, atomically: true, encoding: .utf8) }
    }
}
