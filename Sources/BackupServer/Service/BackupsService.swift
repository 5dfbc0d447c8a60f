import BackupCatalog
import BackupCore
import BackupPostgres
import BackupRules
import BackupWire
import Foundation

/// The handlers of service `backup.v1.Backups`. Each checks the caller's
/// role in the namespace it touches, then does its work through the catalog.
/// Methods not registered here answer UNIMPLEMENTED.
struct BackupsService: Sendable {
    let catalog: Catalog
    let jobs: JobRunner
    let placement: Placement
    let openCalls: OpenCalls
    let watches: JobWatches
    let maxFrameBytes: Int
    let connections: ConnectionLimits
    let downloads: DownloadSettings
    let links: DownloadLinks
    let archiveCache: ArchiveCache
    let uploads: UploadSettings
    let spool: UploadSpool
    let scheduler: Scheduler
    static let version = "0.1.0"

    func register(into router: inout RPCRouter) {
        router.unary(Backups.serverInfo) { _, context in
            let catalogVersion = try await catalog.serverVersion()
            return .with {
                $0.version = Self.version; $0.protocol = "backup-rpc/1"; $0.catalogPostgresVersion = catalogVersion
                $0.serverTimeUnixMS = Int64(Date().timeIntervalSince1970 * 1000); $0.maxFrameBytes = UInt32(maxFrameBytes)
                $0.callerNamespace = context.caller.namespace; $0.callerRole = context.caller.role
                $0.callerTokenName = context.caller.tokenName
                $0.maxOpenCalls = UInt32(connections.maximumOpenCalls)
                $0.handshakeTimeoutMS = connections.handshakeTimeout.milliseconds
                $0.partialFrameTimeoutMS = connections.partialFrameTimeout.milliseconds
                $0.idleConnectionTimeoutMS = connections.idleTimeout.milliseconds
                $0.authenticationTimeoutMS = connections.authenticationTimeout.milliseconds
            }
        }
        registerEnvironments(into: &router)
        registerBackups(into: &router)
        registerJobs(into: &router)
        registerDownloads(into: &router)
        registerUploads(into: &router)
        registerSchedules(into: &router)
        registerTokens(into: &router)
    }

    private func registerEnvironments(into router: inout RPCRouter) {
        router.unary(Backups.registerEnvironment) { request, context in
            try context.authorize(.platform, in: request.namespace)
            // Names first: a request that cannot be cataloged reaches no database.
            try validateName(request.namespace, "namespace")
            try validateName(request.name, "environment name")
            var request = request
            request.fileQuery = request.fileQuery.isEmpty ? mendixFileQuery : request.fileQuery
            let location = try await placement.check(EnvironmentLocation(
                namespace: request.namespace, name: request.name, databaseURL: request.databaseURL,
                fileStorePath: request.fileStorePath, fileQuery: request.fileQuery))
            request.fileStorePath = location.fileStorePath
            request.fileQuery = location.fileQuery
            return redacted(try await catalog.registerEnvironment(request))
        }
        router.unary(Backups.listEnvironments) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace, platform: true)
            let page = try await catalog.listEnvironments(namespace: namespace, pageSize: request.pageSize, pageToken: request.pageToken)
            return fitted(page) { page in .with { $0.environments = page.items.map(redacted); $0.nextPageToken = page.nextPageToken } }
        }
        router.unary(Backups.getEnvironment) { request, context in
            try context.authorize(.viewer, in: request.namespace, platform: true)
            return redacted(try await catalog.environment(namespace: request.namespace, name: request.name))
        }
        router.unary(Backups.updateEnvironment) { request, context in
            // Where the data lives is the platform's decision; the app and its version are the namespace's too.
            let movesData = !request.databaseURL.isEmpty || !request.fileStorePath.isEmpty || !request.fileQuery.isEmpty
            try context.authorize(movesData ? .platform : .admin, in: request.namespace, platform: true)
            guard movesData || !request.app.isEmpty || !request.packageVersion.isEmpty else {
                throw BackupError.invalidArgument("nothing to update: give app, package_version, database_url, file_store_path or file_query")
            }
            var request = request
            if movesData {
                let current = try await catalog.environment(namespace: request.namespace, name: request.name)
                let location = try await placement.check(EnvironmentLocation(
                    namespace: request.namespace, name: request.name,
                    databaseURL: request.databaseURL.isEmpty ? current.databaseURL : request.databaseURL,
                    fileStorePath: request.fileStorePath.isEmpty ? current.fileStorePath : request.fileStorePath,
                    fileQuery: request.fileQuery.isEmpty ? current.fileQuery : request.fileQuery))
                request.fileStorePath = location.fileStorePath
                request.fileQuery = location.fileQuery
            }
            return redacted(try await catalog.updateEnvironment(request))
        }
        router.unary(Backups.setEnvironmentState) { request, context in
            try context.authorize(.operator, in: request.namespace, platform: true)
            return redacted(try await catalog.setEnvironmentState(namespace: request.namespace, name: request.name,
                                                                  state: request.state, actor: context.caller.tokenName))
        }
        router.unary(Backups.deleteEnvironment) { request, context in
            try context.authorize(.platform, in: request.namespace)
            let deleted = try await catalog.deleteEnvironment(namespace: request.namespace, name: request.name,
                                                              force: request.force, actor: context.caller.tokenName)
            if deleted > 0 { jobs.requestGarbageCollection() }
            return .with { $0.deletedBackups = deleted }
        }
    }

    private func registerBackups(into router: inout RPCRouter) {
        router.unary(Backups.createBackup) { request, context in
            try context.authorize(.operator, in: request.namespace)
            let (backup, job) = try await catalog.createBackup(namespace: request.namespace, environment: request.environment,
                                                               kind: .onDemand, comment: request.comment,
                                                               actor: context.caller.tokenName)
            jobs.wake()
            return .with { $0.backup = backup; $0.job = job }
        }
        router.unary(Backups.listBackups) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let page = try await catalog.listBackups(
                BackupFilter(namespace: namespace, environment: request.environment, kind: request.kind, status: request.status),
                pageSize: request.pageSize, pageToken: request.pageToken)
            return fitted(page) { page in .with { $0.backups = page.items; $0.nextPageToken = page.nextPageToken } }
        }
        router.unary(Backups.getBackup) { request, context in
            try await reachableBackup(request.id, .viewer, context)
        }
        router.unary(Backups.updateBackup) { request, context in
            let backup = try await reachableBackup(request.id, .operator, context)
            return try await catalog.updateBackupComment(id: backup.id, comment: request.comment, actor: context.caller.tokenName)
        }
        router.unary(Backups.deleteBackup) { request, context in
            let backup = try await reachableBackup(request.id, .operator, context)
            _ = try await catalog.deleteBackup(id: backup.id, actor: context.caller.tokenName)
            jobs.requestGarbageCollection()
            return DeleteBackupResponse()
        }
        router.unary(Backups.verifyBackup) { request, context in
            let backup = try await reachableBackup(request.id, .operator, context)
            let job = try await catalog.requestVerification(backupID: backup.id, actor: context.caller.tokenName)
            jobs.wake()
            return job
        }
        router.unary(Backups.restoreBackup) { request, context in
            let backup = try await reachableBackup(request.backupID, .operator, context)
            guard !request.targetEnvironment.isEmpty else { throw BackupError.invalidArgument("target_environment is required") }
            let targetNamespace = try context.namespace(request.targetNamespace)
            // Refused across namespaces whatever the caller may do elsewhere.
            guard targetNamespace == backup.namespace else {
                throw BackupError.permissionDenied(
                    "backup \(backup.id) belongs to namespace \(backup.namespace); restoring into namespace \(targetNamespace) is refused")
            }
            let job = try await catalog.createRestore(
                backupID: request.backupID, targetNamespace: targetNamespace, targetEnvironment: request.targetEnvironment,
                databaseOnly: request.databaseOnly, acceptVersionMismatch: request.acceptVersionMismatch,
                actor: context.caller.tokenName)
            jobs.wake()
            return job
        }
        router.unary(Backups.listActivity) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let page = try await catalog.listActivity(namespace: namespace, environment: request.environment,
                                                      pageSize: request.pageSize, pageToken: request.pageToken)
            return fitted(page) { page in .with { $0.activity = page.items; $0.nextPageToken = page.nextPageToken } }
        }
    }

    private func registerJobs(into router: inout RPCRouter) {
        router.unary(Backups.getJob) { request, context in
            try await reachableJob(request.id, context)
        }
        router.unary(Backups.cancelJob) { request, context in
            let job = try await reachableJob(request.id, context, role: .operator)
            let cancelled = try await catalog.requestCancellation(jobID: job.id, actor: context.caller.tokenName)
            jobs.wake()
            return cancelled
        }
        router.serverStreaming(Backups.watchJob) { request, context, responses in
            var job = try await reachableJob(request.id, context)
            try await responses.write(job)
            guard !job.status.isTerminal else { return }
            for await next in try watches.readings(of: job.id, token: context.caller.tokenID) where next != job {
                try await responses.write(next)
                job = next
            }
        }
    }

    private func registerDownloads(into router: inout RPCRouter) {
        router.unary(Backups.requestDownload) { request, context in
            let backup = try await reachableBackup(request.backupID, .operator, context)
            guard links.keys != nil else {
                throw BackupError.failedPrecondition("this server signs no download URLs; it must be started with --download-keys")
            }
            let (record, queuedJob) = try await catalog.requestDownload(
                backupID: backup.id, databaseOnly: request.databaseOnly, actor: context.caller.tokenName,
                urlLifetime: downloads.urlLifetime, cacheBytes: downloads.cacheBytes, namespaceShare: downloads.cacheNamespaceShare,
                checkRoom: { [archiveCache] bytes, preparing in try archiveCache.requireRoom(for: bytes, beside: preparing) })
            if queuedJob { jobs.wake() }
            return links.message(record)
        }
        router.unary(Backups.getDownload) { request, context in
            let record = try await catalog.download(id: request.id)
            try context.authorize(.operator, reaching: record.namespace, orAnswer: .notFound("download \(record.id) does not exist"))
            return links.message(record)
        }
    }

    private func registerUploads(into router: inout RPCRouter) {
        router.unary(Backups.startUpload) { request, context in
            try context.authorize(.operator, in: request.namespace)
            guard let sha256 = ContentHash(hex: request.sha256) else {
                throw BackupError.invalidArgument("sha256 \"\(request.sha256)\" is not 64 lowercase hex digits")
            }
            guard request.sizeBytes > 0, request.sizeBytes <= uploads.maximumBytes else {
                throw BackupError.invalidArgument("size_bytes \(request.sizeBytes) is not between 1 and the limit of \(uploads.maximumBytes)")
            }
            guard request.filename.utf8.count <= 255, !request.filename.contains("/") else {
                throw BackupError.invalidArgument("filename must be a file's name: at most 255 bytes, no '/'")
            }
            // One reading of the disk serves both the namespace's share and the room check: free space that grows
            // between two readings could otherwise let an upload past its share.
            let usable = spool.usableDiskBytes()
            return try await catalog.startUpload(
                namespace: request.namespace, environment: request.environment, filename: request.filename, comment: request.comment,
                size: request.sizeBytes, sha256: sha256, actor: context.caller.tokenName, lifetime: spool.lifetime,
                spoolBytes: uploads.spoolBytes, diskBytes: usable, namespaceShare: uploads.namespaceShare,
                prepare: { [spool] id, others in try spool.create(id, size: request.sizeBytes, beside: others, usable: usable) })
        }
        router.clientStreaming(Backups.uploadChunks) { chunks, context in
            // The first chunk names the upload; it lives only in the sequence handed on, which lets go of each
            // chunk once taken, so a call waiting for its next chunk holds none.
            let (upload, received) = try await { () async throws -> (Upload, ReceivedChunks) in
                var iterator = chunks.makeAsyncIterator()
                guard let first = try await iterator.next() else { throw BackupError.invalidArgument("the call sent no chunk") }
                return (try await reachableUpload(first.uploadID, context), ReceivedChunks(first: first, rest: iterator))
            }()
            try await spool.receive(upload, chunks: received)
            return try await catalog.upload(id: upload.id)
        }
        router.unary(Backups.finishUpload) { request, context in
            let upload = try await reachableUpload(request.uploadID, context)
            let finishing = try await catalog.finishUpload(id: upload.id, actor: context.caller.tokenName)
            jobs.wake()
            return finishing
        }
        router.unary(Backups.getUpload) { request, context in
            try await reachableUpload(request.uploadID, context)
        }
        router.unary(Backups.abandonUpload) { request, context in
            let upload = try await reachableUpload(request.uploadID, context, platform: true)
            let (abandoned, changed) = try await catalog.abandonUpload(id: upload.id, actor: context.caller.tokenName)
            // Its reservation went with the commit; its data goes now (a call still writing fails its next count).
            if changed { spool.remove([upload.id]) }
            return abandoned
        }
    }

    private func registerSchedules(into router: inout RPCRouter) {
        router.unary(Backups.getSchedule) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            return try await catalog.schedule(namespace: namespace, environment: request.environment)
        }
        router.unary(Backups.setSchedule) { request, context in
            var wanted = request.schedule
            wanted.namespace = try context.namespace(wanted.namespace)
            try context.authorize(.admin, in: wanted.namespace)
            let schedule = try await catalog.setSchedule(wanted, applyToExisting: request.applyToExisting,
                                                         actor: context.caller.tokenName)
            // Re-dated backups may have expired already.
            if schedule.backupsRedated > 0 { scheduler.wake() }
            return schedule
        }
    }

    /// An upload the caller may send to (or, with `platform`, the platform
    /// too); another namespace's answers NOT_FOUND as an unknown id does.
    private func reachableUpload(_ id: String, _ context: CallContext, platform: Bool = false) async throws -> Upload {
        let upload = try await catalog.upload(id: id)
        try context.authorize(.operator, reaching: upload.namespace, platform: platform,
                              orAnswer: .notFound("upload \(upload.id) does not exist"))
        return upload
    }

    private func registerTokens(into router: inout RPCRouter) {
        router.unary(Backups.createToken) { request, context in
            // Only the platform makes platform tokens; an admin makes its own namespace's.
            let namespace = request.role == .platform ? request.namespace : try context.namespace(request.namespace)
            try context.authorize(request.role == .platform ? .platform : .admin, in: namespace, platform: true)
            let (token, secret) = try await catalog.createToken(namespace: namespace, role: request.role, name: request.name)
            return .with { $0.token = token; $0.secret = secret }
        }
        router.unary(Backups.listTokens) { request, context in
            // A platform token lists a namespace's tokens, or with no namespace the platform's.
            let namespace = context.caller.role == .platform ? request.namespace : try context.namespace(request.namespace)
            try context.authorize(.admin, in: namespace, platform: true)
            let page = try await catalog.listTokens(namespace: namespace, pageSize: request.pageSize, pageToken: request.pageToken)
            return fitted(page) { page in .with { $0.tokens = page.items; $0.nextPageToken = page.nextPageToken } }
        }
        router.unary(Backups.revokeToken) { request, context in
            let token = try await catalog.token(id: request.id)
            try context.authorize(token.role == .platform ? .platform : .admin, reaching: token.namespace, platform: true,
                                  orAnswer: .notFound("token \(token.id) does not exist"))
            let revoked = try await catalog.revokeToken(id: token.id)
            openCalls.end(callsOf: token.id)
            return revoked
        }
    }

    /// The response for the longest first part of a page that fits in one
    /// frame; the rest follows with the next page token.
    private func fitted<Item, Response: WireMessage>(_ page: Page<Item>, _ response: (Page<Item>) -> Response) -> Response {
        // Room for the frame around the message: call id, field tags, lengths.
        let budget = maxFrameBytes - 32
        var page = page
        var message = response(page)
        var size = message.serializedBytes().count
        while size > budget && page.items.count > 1 {
            page = page.prefix(max(1, min(page.items.count - 1, page.items.count * budget / size)))
            message = response(page)
            size = message.serializedBytes().count
        }
        return message
    }

    /// A backup the caller may act on with `role`; another namespace's answers NOT_FOUND as an unknown id does.
    private func reachableBackup(_ id: String, _ role: Role, _ context: CallContext) async throws -> Backup {
        let backup = try await catalog.backup(id: id)
        try context.authorize(role, reaching: backup.namespace, orAnswer: .notFound("backup \(backup.id) does not exist"))
        return backup
    }

    /// A job the caller may look at; another namespace's answers NOT_FOUND as an unknown id does.
    private func reachableJob(_ id: String, _ context: CallContext, role: Role = .viewer) async throws -> Job {
        let job = try await catalog.job(id: id)
        try context.authorize(role, reaching: job.namespace, orAnswer: .notFound("job \(job.id) does not exist"))
        return job
    }
}

/// An environment as shown to callers: the credentials in its connection
/// string are replaced, however they were spelled (`ConnectionString.redacted`).
func redacted(_ environment: Environment) -> Environment {
    var copy = environment
    copy.databaseURL = ConnectionString.redacted(copy.databaseURL)
    return copy
}

/// A call's chunks, its first already read: each is handed out once and
/// not kept (the first is moved out, not copied), so a call waiting for its
/// next chunk holds none.
private final class ReceivedChunks: AsyncSequence {
    typealias Element = UploadChunk
    private var first: UploadChunk?
    private let rest: RequestMessages<UploadChunk>.AsyncIterator

    init(first: UploadChunk, rest: RequestMessages<UploadChunk>.AsyncIterator) {
        self.first = first
        self.rest = rest
    }

    func makeAsyncIterator() -> Iterator { Iterator(first: first.take(), rest: rest) }

    struct Iterator: AsyncIteratorProtocol {
        var first: UploadChunk?
        var rest: RequestMessages<UploadChunk>.AsyncIterator

        mutating func next() async throws -> UploadChunk? {
            if let chunk = first.take() { return chunk }
            return try await rest.next()
        }
    }
}
