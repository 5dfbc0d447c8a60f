import ArgumentParser
import AsyncHTTPClient
import BackupCatalog
import BackupPostgres
import BackupRules
import BackupServer
import BackupStorage
import BackupWire
import Foundation
import Logging
import NIOPosix

// The settings of `backupd serve`, one group per concern, as `--help` shows
// them. Each is an option on the command line, a variable in the environment
// (BACKUPD_ and the option's name in capitals, `-` as `_`) and a key of the
// configuration file (the option's name); `Settings.swift` layers the three.
// Each group checks its own values and writes them into the server's
// configuration.

/// Where the catalog is; shared by every subcommand that reaches it.
struct CatalogOptions: ParsableArguments {
    @Option(help: "libpq connection string of the catalog database (env BACKUPD_CATALOG).")
    var catalog = ""

    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("--catalog (or BACKUPD_CATALOG) is required") }
    }

    /// Runs `body` with the catalog, migrated to this version's schema, on
    /// two connections (store migrate renews its fence on one while it
    /// copies on the other) and a pool of three threads (the catalog's two
    /// and one for blob work): what the commands that work beside serve need.
    func withCatalog<T>(_ body: (Catalog, NIOThreadPool) async throws -> T) async throws -> T {
        let threadPool = NIOThreadPool(numberOfThreads: 3)
        threadPool.start()
        let catalog = Catalog(connectionString: try ConnectionString.absorbingEnvironment(catalog), maximumConnections: 2, threadPool: threadPool)
        do {
            try await catalog.migrate()
            let result = try await body(catalog, threadPool)
            await catalog.pool.close()
            try await threadPool.shutdownGracefully()
            return result
        } catch {
            await catalog.pool.close()
            try? await threadPool.shutdownGracefully()
            if error is CommandFailure || error is ExitCode { throw error }
            throw CommandFailure(description: "\(error)")
        }
    }
}

/// A command whose arguments were fine failed as it ran (the catalog out of
/// reach, a refusal): ArgumentParser prints "Error: " and the message,
/// without the usage a `ValidationError` brings, and exits 1 (helper
/// finding: every runtime failure of keys and store printed the usage and
/// exited 64, as if the command line were wrong).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
}

/// The RPC listener, its TLS credentials and where its download links point.
struct ListenerOptions: ParsableArguments {
    @Option(help: "Address to listen on, HOST:PORT; port 0 picks a free one.")
    var listen = "127.0.0.1:7443"

    @Option(help: "PEM certificate chain of the server (env BACKUPD_TLS_CERT).")
    var cert = ""

    @Option(help: "PEM private key of the server (env BACKUPD_TLS_KEY).")
    var key = ""

    @Option(help: "Require client certificates signed by this CA (mutual TLS) (env BACKUPD_TLS_CLIENT_CA).")
    var clientCA: String?

    @Option(help: "Scheme, host and port that download URLs start with, e.g. https://backups.example.com:7443 (default: the listen address).")
    var publicURL: String?

    var tls: TLSSettings { TLSSettings(certificateChainPath: cert, privateKeyPath: key, clientCAPath: clientCA) }

    func validate() throws {
        guard !cert.isEmpty, !key.isEmpty else { throw ValidationError("--cert and --key (or BACKUPD_TLS_CERT, BACKUPD_TLS_KEY) are required") }
        guard hostAndPort(listen) != nil else { throw ValidationError("--listen \"\(listen)\" is not HOST:PORT") }
        if let publicURL, !(publicURL.hasPrefix("https://") && publicURL.count > 8 && !publicURL.contains("?")) {
            throw ValidationError("--public-url \"\(publicURL)\" is not an https:// origin")
        }
    }

    func apply(to configuration: inout ServerConfiguration) {
        (configuration.host, configuration.port) = hostAndPort(listen)!
        configuration.downloads.publicURL = publicURL
    }
}

/// What one client and all of them together may hold of the server: connections, frames, time.
struct ConnectionOptions: ParsableArguments {
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

    @Option(help: "Bytes of received frames that all connections together may hold beyond their own 64 KiB windows; past it they stop reading.")
    var sharedReceiveBytes = ConnectionLimits().sharedReceiveBytes

    @Option(help: "Of --shared-receive-bytes, what the connections of one client address may hold (at least --max-frame-bytes).")
    var sharedReceiveBytesPerPeer = ConnectionLimits().sharedReceiveBytesPerPeer

    func validate() throws {
        try requireAtLeastOne([
            ("--max-frame-bytes", maxFrameBytes), ("--handshake-timeout-seconds", handshakeTimeoutSeconds),
            ("--authentication-timeout-seconds", authenticationTimeoutSeconds), ("--partial-frame-timeout-seconds", partialFrameTimeoutSeconds),
            ("--idle-connection-timeout-seconds", idleConnectionTimeoutSeconds), ("--max-connections", maxConnections),
            ("--max-connections-per-peer", maxConnectionsPerPeer),
        ])
        // A frame that may never fit in what its client can borrow would wait forever.
        guard sharedReceiveBytesPerPeer >= maxFrameBytes, sharedReceiveBytes >= sharedReceiveBytesPerPeer else {
            throw ValidationError("--shared-receive-bytes-per-peer must be at least --max-frame-bytes, and --shared-receive-bytes at least that")
        }
    }

    func apply(to configuration: inout ServerConfiguration, descriptorsForConnections: Int) {
        configuration.maxFrameBytes = maxFrameBytes
        configuration.connections.handshakeTimeout = .seconds(handshakeTimeoutSeconds)
        configuration.connections.authenticationTimeout = .seconds(authenticationTimeoutSeconds)
        configuration.connections.partialFrameTimeout = .seconds(partialFrameTimeoutSeconds)
        configuration.connections.idleTimeout = .seconds(idleConnectionTimeoutSeconds)
        configuration.connections.maximumConnections = min(maxConnections, descriptorsForConnections)
        configuration.connections.maximumConnectionsPerPeer = maxConnectionsPerPeer
        configuration.connections.sharedReceiveBytes = sharedReceiveBytes
        configuration.connections.sharedReceiveBytesPerPeer = sharedReceiveBytesPerPeer
    }
}

/// Where blobs are kept: a local folder, or an S3-compatible bucket.
struct BlobStoreOptions: ParsableArguments {
    @Option(help: "Folder of the blob store; with --blob-store, of this process's work files only.")
    var blobDir = ""

    @Option(help: "Keep blobs in an S3-compatible bucket, s3://BUCKET/PREFIX, instead of --blob-dir.")
    var blobStore = ""

    @Option(help: "URL of the S3-compatible service, e.g. http://minio:9000 (default: AWS's for --s3-region).")
    var s3Endpoint = ""

    @Option(help: "Region requests are signed for (env BACKUPD_S3_REGION or AWS_REGION).")
    var s3Region = "us-east-1"

    @Flag(inversion: .prefixedNo,
          help: "Name the bucket in the path (http://host/bucket/key, as MinIO and Ceph take it) rather than in the host name.")
    var s3PathStyle = false

    @Option(help: "Access key id of the store (env BACKUPD_S3_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID; its secret only in AWS_SECRET_ACCESS_KEY or --s3-credentials-file).")
    var s3AccessKeyID: String?

    @Option(help: "File with the store's credentials in AWS's format (aws_access_key_id, aws_secret_access_key, aws_session_token).")
    var s3CredentialsFile: String?

    @Option(help: "Size of the parts large blobs are sent in, MiB (at least 5).")
    var s3PartSizeMib = 8

    @Option(help: "Parts of one blob sent at once.")
    var s3PartsInFlight = 3

    @Option(help: "Connections to the object store at once.")
    var s3Connections = 32

    @Option(help: "Seconds one request to the object store may take.")
    var s3RequestTimeoutSeconds = 60

    @Option(help: "Have the bucket (made with object lock) retain every backup's objects until the backup expires: governance or compliance (S3's modes; in compliance nobody can delete them early, the bucket's owner included).")
    var s3ObjectLock: String?

    @Option(help: "With --s3-object-lock, days past a backup's expiry its objects are retained: a nightly backup that reuses an object extends it once in this many days.")
    var s3ObjectLockMarginDays = 7

    @Option(help: "With --s3-object-lock, days ahead objects are retained at most: a backup kept longer is retained this far and extended as time passes, so a tenant's retention of years does not bind the bucket for years at once.")
    var s3ObjectLockMaxDays = 400

    @Option(help: "File of the master keys that wrap each namespace's data key, a KEY_ID = BASE64_SECRET line each (32 bytes) and a wrap-with line; with it, every namespace's new content is kept encrypted under a key of its own. Keep it apart from the store.")
    var storageKeys = ""

    func validate() throws {
        guard !blobDir.isEmpty else { throw ValidationError("--blob-dir (or BACKUPD_BLOB_DIR) is required") }
        guard (5...5 << 10).contains(s3PartSizeMib) else { throw ValidationError("--s3-part-size-mib takes 5 to 5120 (S3's limits of a part)") }
        try requireAtLeastOne([("--s3-parts-in-flight", s3PartsInFlight), ("--s3-connections", s3Connections),
                               ("--s3-request-timeout-seconds", s3RequestTimeoutSeconds), ("--s3-object-lock-max-days", s3ObjectLockMaxDays)])
        if let s3ObjectLock {
            guard objectLockMode != nil else { throw ValidationError("--s3-object-lock takes governance or compliance, not \"\(s3ObjectLock)\"") }
            guard !blobStore.isEmpty else { throw ValidationError("--s3-object-lock needs --blob-store: the local folder cannot retain objects") }
        }
        // Bounded so that seconds of them fit any clock (helper finding: a huge number crashed the check).
        guard (0...3_650).contains(s3ObjectLockMarginDays) else { throw ValidationError("--s3-object-lock-margin-days takes 0 to 3650") }
        guard s3ObjectLockMaxDays <= 36_500 else { throw ValidationError("--s3-object-lock-max-days takes 1 to 36500") }
    }

    /// The object lock mode of --s3-object-lock, nil without it.
    var objectLockMode: ObjectLockMode? { s3ObjectLock.flatMap { ObjectLockMode(rawValue: $0.uppercased()) } }

    /// Reads the storage key file.
    func apply(to configuration: inout ServerConfiguration) throws {
        configuration.jobs.retentionMargin = .seconds(Int64(s3ObjectLockMarginDays) * 86_400)
        configuration.jobs.retentionCap = .seconds(Int64(s3ObjectLockMaxDays) * 86_400)
        guard !storageKeys.isEmpty else { return }
        do {
            configuration.storageKeys = try StorageKeys(reading: storageKeys)
            configuration.storageKeyFile = storageKeys
        } catch {
            throw ValidationError("--storage-keys: \(error)")
        }
    }

    /// The HTTP client of the object store `objectStore` names (nil for the
    /// local folder); its owner shuts it down.
    func objectStoreHTTP(_ objectStore: (ObjectStoreLocation, ObjectStoreCredentials)?) -> HTTPClient? {
        objectStore.map { _ in
            HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                       configuration: .init(connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: s3Connections)))
        }
    }

    /// The local folder, or the object store (its streamed content staged in
    /// the work folder's scratch, which the job runner sweeps of what dead
    /// jobs left).
    func makeBlobStore(_ objectStore: (ObjectStoreLocation, ObjectStoreCredentials)?, http: HTTPClient?) throws -> any BlobStore {
        guard let (location, credentials) = objectStore, let http else { return try LocalBlobStore(root: blobDir) }
        do {
            var client = try ObjectStoreClient(location: location, credentials: credentials, http: http)
            client.requestTimeout = .seconds(Int64(s3RequestTimeoutSeconds))
            return try ObjectBlobStore(client: client, scratchDirectory: blobDir + "/tmp", partSize: s3PartSizeMib << 20,
                                       partsInFlight: s3PartsInFlight, objectLock: objectLockMode)
        } catch let error as ObjectStoreError {
            throw ValidationError(error.description)
        }
    }

    /// The object store's location and credentials, checked; nil for the local folder.
    func objectStore() throws -> (ObjectStoreLocation, ObjectStoreCredentials)? {
        guard !blobStore.isEmpty else { return nil }
        let environment = ProcessInfo.processInfo.environment
        do {
            let location = try ObjectStoreSettings.location(url: blobStore, endpoint: s3Endpoint, region: s3Region, pathStyle: s3PathStyle)
            let credentials = try ObjectStoreSettings.credentials(
                file: s3CredentialsFile, accessKeyID: s3AccessKeyID,
                secretAccessKey: environment["AWS_SECRET_ACCESS_KEY"], sessionToken: environment["AWS_SESSION_TOKEN"])
            return (location, credentials)
        } catch {
            throw ValidationError(error.description)
        }
    }
}

/// How many jobs run here, and how each runs its tools.
struct JobOptions: ParsableArguments {
    @Option(help: "Jobs run at once by this process; 0 for a process that only serves the API (other processes on the catalog run its jobs).")
    var maxJobs = 2

    @Option(help: "The share of the job slots one namespace may hold at once (at least one slot).")
    var namespaceJobShare = JobSettings().namespaceShare.fraction

    @Option(help: "On SIGTERM, seconds running jobs may go on before they are cancelled.")
    var shutdownGraceSeconds = 30

    @Option(help: "Seconds a job's lease lasts; a job whose process stops renewing it is failed after this.")
    var jobLeaseSeconds = 30

    @Option(help: "pg_dump to run; it must be as new as the app databases' servers.")
    var pgDump = "/usr/bin/pg_dump"

    @Option(help: "pg_restore to run.")
    var pgRestore = "/usr/bin/pg_restore"

    @Option(help: "Seconds pg_dump or pg_restore may go without progress (dump size, restored database size) before the job is stopped.")
    var toolStallSeconds = 600

    @Option(help: "Parallel workers of one pg_restore (default: the number of cores).")
    var restoreJobs = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "zstd level of new dump chunks, 1 (fast) to 19 (smallest).")
    var dumpCompressionLevel = 1

    @Flag(inversion: .prefixedNo,
          help: "Drop a restored environment's previous database and files at once, instead of keeping them until its next restore.")
    var dropPreviousOnRestore = false

    @Option(help: ArgumentHelp("Fault injection for recovery tests: die right after a restore records this step.", visibility: .private))
    var dieAfterRestoreStep: String?

    func validate() throws {
        guard maxJobs >= 0 else { throw ValidationError("--max-jobs may not be negative (0: this process serves the API and runs no job)") }
        guard NamespaceShare(namespaceJobShare) != nil else { throw ValidationError("--namespace-job-share must be above 0 and at most 1") }
        guard shutdownGraceSeconds >= 0 else { throw ValidationError("--shutdown-grace-seconds may not be negative") }
        try requireAtLeastOne([("--job-lease-seconds", jobLeaseSeconds), ("--tool-stall-seconds", toolStallSeconds),
                               ("--restore-jobs", restoreJobs)])
        guard (1...19).contains(dumpCompressionLevel) else { throw ValidationError("--dump-compression-level must be 1 to 19") }
        if let step = dieAfterRestoreStep, RestoreStep(rawValue: step) == nil {
            throw ValidationError("--die-after-restore-step \"\(step)\" is not one of " + RestoreStep.allCases.map(\.rawValue).joined(separator: ", "))
        }
    }

    func apply(to configuration: inout ServerConfiguration) {
        configuration.jobs.maximumConcurrentJobs = maxJobs
        configuration.jobs.namespaceShare = NamespaceShare(namespaceJobShare)!
        configuration.jobs.shutdownGrace = .seconds(shutdownGraceSeconds)
        configuration.jobs.leaseSeconds = jobLeaseSeconds
        configuration.jobs.tools.pgDump = pgDump
        configuration.jobs.tools.pgRestore = pgRestore
        configuration.jobs.tools.stallTimeout = .seconds(toolStallSeconds)
        configuration.jobs.restoreParallelism = restoreJobs
        configuration.jobs.dumpCompressionLevel = dumpCompressionLevel
        configuration.jobs.keepPreviousOnRestore = !dropPreviousOnRestore
        configuration.jobs.dieAfterRestoreStep = dieAfterRestoreStep.flatMap(RestoreStep.init(rawValue:))
    }
}

/// Which app databases and file stores environments may name, and how much one backup may take of them.
struct AppOptions: ParsableArguments {
    @Option(help: "A folder that environments' file stores may lie under (repeatable); with none, no file store is accepted.")
    var fileStoreRoot: [String] = []

    @Option(help: "Hosts that app databases may be on, comma-separated (repeatable); with none, any TCP host.")
    var appDatabaseHosts: [String] = []

    @Flag(inversion: .prefixedNo,
          help: "Allow app database URLs that name a Unix-domain socket (where the server may trust backupd's OS user).")
    var allowSocketAppDatabases = false

    @Option(help: "Seconds a connection to an app database may take to open.")
    var appDatabaseConnectTimeoutSeconds = AppDatabasePolicy().connectTimeoutSeconds

    @Option(help: "Seconds a restore keeps trying to rename or drop an app database that is in use (autovacuum, a session it may end) before it fails naming the session.")
    var databaseTakeoverSeconds = 30

    @Option(help: "Most file documents one backup may hold: the file query's row cap.")
    var maxFilesPerBackup = AppDatabasePolicy().maximumFilesPerBackup

    @Option(help: "Seconds the file query of one backup may run.")
    var fileQueryTimeoutSeconds = 60

    func validate() throws {
        try requireAtLeastOne([
            ("--app-database-connect-timeout-seconds", appDatabaseConnectTimeoutSeconds), ("--database-takeover-seconds", databaseTakeoverSeconds),
            ("--max-files-per-backup", maxFilesPerBackup), ("--file-query-timeout-seconds", fileQueryTimeoutSeconds),
        ])
    }

    func apply(to configuration: inout ServerConfiguration) {
        configuration.fileStoreRoots = fileStoreRoot
        configuration.appDatabases.allowedHosts = appDatabaseHosts
            .flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
        configuration.appDatabases.allowSocketHosts = allowSocketAppDatabases
        configuration.appDatabases.connectTimeoutSeconds = appDatabaseConnectTimeoutSeconds
        configuration.appDatabases.takeoverTimeout = .seconds(databaseTakeoverSeconds)
        configuration.appDatabases.maximumFilesPerBackup = maxFilesPerBackup
        configuration.appDatabases.fileQueryTimeout = "\(fileQueryTimeoutSeconds)s"
    }
}

/// Signed download links and the archives they serve.
struct DownloadOptions: ParsableArguments {
    @Option(help: "File of the keys that sign download URLs, a KEY_ID = BASE64_SECRET line each and a sign-with line; without it downloads are refused.")
    var downloadKeys = ""

    @Option(help: "Seconds a download URL works, from when its archive is ready (default 8 hours).")
    var downloadURLLifetimeSeconds = 8 * 3600

    @Option(help: "Folder where archives wait for their downloads (default: BLOB_DIR/archives).")
    var archiveCache: String?

    @Option(help: "Bytes all prepared archives together may take (default 20 GiB); a download past it is refused with RESOURCE_EXHAUSTED.")
    var archiveCacheBytes: UInt64 = DownloadSettings().cacheBytes

    @Option(help: "Downloads streaming at once; more are answered 503 with Retry-After.")
    var maxDownloads = DownloadSettings().maximumStreams

    @Option(help: "Downloads of one namespace streaming at once.")
    var maxDownloadsPerNamespace = DownloadSettings().maximumStreamsPerNamespace

    @Option(help: "gzip level of full archives, 0 (stored: for files that do not compress) to 9.")
    var archiveGzipLevel = DownloadSettings().gzipLevel

    func validate() throws {
        try requireAtLeastOne([("--download-url-lifetime-seconds", downloadURLLifetimeSeconds), ("--max-downloads", maxDownloads),
                               ("--max-downloads-per-namespace", maxDownloadsPerNamespace)])
        guard (0...9).contains(archiveGzipLevel) else { throw ValidationError("--archive-gzip-level must be 0 to 9") }
    }

    /// Reads the key file.
    func apply(to configuration: inout ServerConfiguration) throws {
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
        configuration.downloads.gzipLevel = archiveGzipLevel
        configuration.downloads.maximumStreams = maxDownloads
        configuration.downloads.maximumStreamsPerNamespace = maxDownloadsPerNamespace
    }
}

/// Uploads of archives made elsewhere: how large, how many, how slow, and what they may expand to.
struct UploadOptions: ParsableArguments {
    @Option(help: "Folder where uploads are received (default: BLOB_DIR/uploads).")
    var uploadDir: String?

    @Option(help: "Largest upload accepted, in bytes (default 200 GiB).")
    var maxUploadBytes: UInt64 = UploadSettings().maximumBytes

    @Option(help: "Bytes all unfinished uploads together may announce (default 200 GiB); one namespace's may announce half.")
    var uploadSpoolBytes: UInt64 = UploadSettings().spoolBytes

    @Option(help: "Seconds an upload may go without a chunk before it is abandoned and its data removed (default 24 hours).")
    var uploadLifetimeSeconds = 24 * 3600

    @Option(help: "Bytes a second an upload must receive on average over each --upload-rate-window-seconds, or it expires.")
    var uploadMinimumRateBytes: UInt64 = UploadSettings().minimumRate

    @Option(help: "Seconds over which an upload's rate is measured (default 6 hours).")
    var uploadRateWindowSeconds = Int(UploadSettings().rateWindow.components.seconds)

    @Option(help: "Members an uploaded archive may hold (default: --max-files-per-backup documents, .metadata and the dump).")
    var uploadMaxMembers: Int?

    @Option(help: "Largest member of an uploaded archive, in bytes (default 100 GiB).")
    var uploadMaxMemberBytes = SnapshotArchiveReader.Limits().memberBytes

    @Option(help: "Bytes an uploaded archive's members may expand to together (default 500 GiB).")
    var uploadMaxExpandedBytes = SnapshotArchiveReader.Limits().expandedBytes

    @Option(help: "Times its compressed size an uploaded archive may expand to, past its first 64 MiB.")
    var uploadMaxExpansionRatio = SnapshotArchiveReader.Limits().expansionRatio

    func validate() throws {
        try requireAtLeastOne([
            ("--upload-lifetime-seconds", uploadLifetimeSeconds), ("--upload-rate-window-seconds", uploadRateWindowSeconds),
            ("--upload-max-members", uploadMaxMembers ?? 1), ("--upload-max-member-bytes", Int(clamping: uploadMaxMemberBytes)),
            ("--upload-max-expanded-bytes", Int(clamping: uploadMaxExpandedBytes)),
            ("--upload-max-expansion-ratio", Int(clamping: uploadMaxExpansionRatio)),
        ])
    }

    func apply(to configuration: inout ServerConfiguration) {
        configuration.uploads.directory = uploadDir
        configuration.uploads.maximumBytes = maxUploadBytes
        configuration.uploads.spoolBytes = uploadSpoolBytes
        configuration.uploads.lifetime = .seconds(uploadLifetimeSeconds)
        configuration.uploads.minimumRate = uploadMinimumRateBytes
        configuration.uploads.rateWindow = .seconds(uploadRateWindowSeconds)
        // Every document of the largest backup, its .metadata and its dump.
        configuration.uploads.archiveLimits.members = uploadMaxMembers ?? configuration.appDatabases.maximumFilesPerBackup + 2
        configuration.uploads.archiveLimits.memberBytes = uploadMaxMemberBytes
        configuration.uploads.archiveLimits.expandedBytes = uploadMaxExpandedBytes
        configuration.uploads.archiveLimits.expansionRatio = uploadMaxExpansionRatio
    }
}

/// Nightly backups and the deletion of expired ones.
struct ScheduleOptions: ParsableArguments {
    @Flag(inversion: .prefixedNo,
          help: "Make each environment's nightly backups and delete expired backups (every process on a catalog may).")
    var scheduler = true

    @Option(help: "Seconds between the scheduler's looks for due nights and expired backups.")
    var scheduleIntervalSeconds = 30

    @Option(help: "Minutes after a window's start over which environments' nightly backups are spread.")
    var scheduleSpreadMinutes = 60

    @Option(help: "Seconds before a failed nightly backup's second and third attempts, comma-separated.")
    var nightlyRetrySeconds = "300,1200"

    @Option(help: ArgumentHelp("For tests of the scheduler: seconds its clock runs ahead of the real one.", visibility: .private))
    var scheduleClockOffsetSeconds: Double = 0

    private var retryDelays: [Int]? {
        let delays = nightlyRetrySeconds.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return delays.count == NightlyWindow.attempts - 1 && delays.allSatisfy({ $0 >= 0 }) ? delays : nil
    }

    func validate() throws {
        try requireAtLeastOne([("--schedule-interval-seconds", scheduleIntervalSeconds), ("--schedule-spread-minutes", scheduleSpreadMinutes + 1)])
        guard retryDelays != nil else {
            throw ValidationError("--nightly-retry-seconds takes \(NightlyWindow.attempts - 1) numbers of seconds, comma-separated")
        }
    }

    func apply(to configuration: inout ServerConfiguration) {
        configuration.schedule.enabled = scheduler
        configuration.schedule.interval = .seconds(scheduleIntervalSeconds)
        configuration.schedule.spread = .seconds(scheduleSpreadMinutes * 60)
        configuration.schedule.retryDelays = retryDelays!.map { .seconds($0) }
        let clockOffset = scheduleClockOffsetSeconds
        if clockOffset != 0 { configuration.schedule.clock = { Date().addingTimeInterval(clockOffset) } }
    }
}

/// What an operator watches and drives the process by: the admin listener, logs, the configuration file.
struct OperationOptions: ParsableArguments {
    @Option(help: "YAML file of settings, each an option of this command by its name without --; options and BACKUPD_ variables override it.")
    var config: String?

    @Option(help: "Address of the admin listener (plain HTTP: /metrics, /healthz, /readyz, POST /reload), HOST:PORT; off for none.")
    var adminListen = "127.0.0.1:7444"

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel = "info"

    @Option(help: "Log lines as text or json, one object per line for log shippers.")
    var logFormat = "text"

    @Option(help: "Once listening, write HOST:PORT to this file, and on a second line \"admin HOST:PORT\" of the admin listener.")
    var readyFile: String?

    func validate() throws {
        guard adminListen == "off" || hostAndPort(adminListen) != nil else {
            throw ValidationError("--admin-listen \"\(adminListen)\" is neither HOST:PORT nor off")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \"\(logLevel)\" is not a log level") }
        guard ["text", "json"].contains(logFormat) else { throw ValidationError("--log-format \"\(logFormat)\" is neither text nor json") }
    }

    func apply(to configuration: inout ServerConfiguration) {
        configuration.admin = hostAndPort(adminListen).map { AdminSettings(host: $0.0, port: $0.1) }
    }
}

/// Every setting of `backupd serve`, grouped as `--help` shows them.
struct ServeOptions: ParsableArguments {
    @OptionGroup(title: "Catalog") var catalog: CatalogOptions
    @OptionGroup(title: "Listener and TLS") var listener: ListenerOptions
    @OptionGroup(title: "Connection limits") var connections: ConnectionOptions
    @OptionGroup(title: "Blob store") var blobStore: BlobStoreOptions
    @OptionGroup(title: "Jobs") var jobs: JobOptions
    @OptionGroup(title: "App databases and file stores") var apps: AppOptions
    @OptionGroup(title: "Downloads") var downloads: DownloadOptions
    @OptionGroup(title: "Uploads") var uploads: UploadOptions
    @OptionGroup(title: "Schedule") var schedule: ScheduleOptions
    @OptionGroup(title: "Operations") var operations: OperationOptions

    /// Settings that exist for tests only: neither the environment nor a configuration file sets them.
    static let testOnly: Set = ["die-after-restore-step", "schedule-clock-offset-seconds"]

    /// The server's configuration from these settings, the download and storage key files read.
    func serverConfiguration(descriptorsForConnections: Int) throws -> ServerConfiguration {
        var configuration = ServerConfiguration()
        listener.apply(to: &configuration)
        connections.apply(to: &configuration, descriptorsForConnections: descriptorsForConnections)
        jobs.apply(to: &configuration)
        apps.apply(to: &configuration)
        try blobStore.apply(to: &configuration)
        try downloads.apply(to: &configuration)
        uploads.apply(to: &configuration)
        schedule.apply(to: &configuration)
        operations.apply(to: &configuration)
        return configuration
    }
}

/// `HOST:PORT` split, the port checked.
func hostAndPort(_ address: String) -> (String, Int)? {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
        return nil
    }
    return (String(address[..<colon]), port)
}

/// Refuses the first count below one, naming its option.
private func requireAtLeastOne(_ counts: [(option: String, value: Int)]) throws {
    if let (option, _) = counts.first(where: { $0.value < 1 }) { throw ValidationError("\(option) must be at least 1") }
}
