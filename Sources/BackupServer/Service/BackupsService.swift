import BackupCatalog
import BackupStorage
import BackupPostgres
import BackupRules
import BackupWire
import Foundation

/// The handlers of service `backup.v1.Backups`. Each checks the caller's
/// role in the namespace it touches, then does its work through the catalog.
/// Methods not registered here answer UNIMPLEMENTED. The handlers of each
/// feature live in its folder (`Backups/`, `Restores/`, `Verification/`,
/// `Downloads/`, `Uploads/`, `Schedules/`) beside its job; environments, jobs and tokens are here.
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

    func register(into router: inout RPCRouter) {
        router.unary(Backups.serverInfo) { _, context in
            let catalogVersion = try await catalog.serverVersion()
            return .with {
                $0.version = BuildInfo.description; $0.protocol = "backup-rpc/1"; $0.catalogPostgresVersion = catalogVersion
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
        registerRestores(into: &router)
        registerVerification(into: &router)
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

    private func registerTokens(into router: inout RPCRouter) {
        router.unary(Backups.createToken) { request, context in
            // Only the platform makes platform tokens; an admin makes its own namespace's.
            let namespace = request.role == .platform ? request.namespace : try context.namespace(request.namespace)
            try context.authorize(request.role == .platform ? .platform : .admin, in: namespace, platform: true)
            let secret = AccessTokenSecret()
            let token = try await catalog.createToken(namespace: namespace, role: request.role, name: request.name, secretDigest: secret.digest)
            return .with { $0.token = token; $0.secret = secret.text }
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
    func fitted<Item, Response: WireMessage>(_ page: Page<Item>, _ response: (Page<Item>) -> Response) -> Response {
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
    func reachableBackup(_ id: String, _ role: Role, _ context: CallContext) async throws -> Backup {
        let backup = try await catalog.backup(id: id)
        try context.authorize(role, reaching: backup.namespace, orAnswer: .notFound("backup \(backup.id) does not exist"))
        return backup
    }

    /// A job the caller may look at; another namespace's answers NOT_FOUND as an unknown id does.
    func reachableJob(_ id: String, _ context: CallContext, role: Role = .viewer) async throws -> Job {
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
