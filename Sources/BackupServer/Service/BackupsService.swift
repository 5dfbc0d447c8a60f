import BackupCatalog
import BackupCore
import BackupWire
import Foundation

/// The handlers of service `backup.v1.Backups`. Each checks the caller's
/// role in the namespace it touches, then does its work through the catalog.
/// Methods not registered here answer UNIMPLEMENTED.
struct BackupsService: Sendable {
    let catalog: Catalog
    let jobs: JobRunner
    let maxFrameBytes: Int
    static let version = "0.1.0"

    func register(into router: inout RPCRouter) {
        router.unary(Backups.serverInfo) { _, context in
            let catalogVersion = try await catalog.serverVersion()
            return .with {
                $0.version = Self.version; $0.protocol = "backup-rpc/1"; $0.catalogPostgresVersion = catalogVersion
                $0.serverTimeUnixMS = Int64(Date().timeIntervalSince1970 * 1000); $0.maxFrameBytes = UInt32(maxFrameBytes)
                $0.callerNamespace = context.caller.namespace; $0.callerRole = context.caller.role
                $0.callerTokenName = context.caller.tokenName
            }
        }
        registerEnvironments(into: &router)
        registerBackups(into: &router)
        registerJobs(into: &router)
        registerTokens(into: &router)
    }

    private func registerEnvironments(into router: inout RPCRouter) {
        router.unary(Backups.registerEnvironment) { request, context in
            try context.authorize(.admin, in: request.namespace)
            return redacted(try await catalog.registerEnvironment(request))
        }
        router.unary(Backups.listEnvironments) { request, context in
            let namespace = context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let environments = try await catalog.listEnvironments(namespace: namespace).map(redacted)
            return .with { $0.environments = environments }
        }
        router.unary(Backups.getEnvironment) { request, context in
            try context.authorize(.viewer, in: request.namespace)
            return redacted(try await catalog.environment(namespace: request.namespace, name: request.name))
        }
        router.unary(Backups.updateEnvironment) { request, context in
            try context.authorize(.admin, in: request.namespace)
            return redacted(try await catalog.updateEnvironment(request))
        }
        router.unary(Backups.setEnvironmentState) { request, context in
            try context.authorize(.operator, in: request.namespace)
            return redacted(try await catalog.setEnvironmentState(namespace: request.namespace, name: request.name,
                                                                  state: request.state, actor: context.caller.tokenName))
        }
        router.unary(Backups.deleteEnvironment) { request, context in
            try context.authorize(.admin, in: request.namespace)
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
            let namespace = context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let page = try await catalog.listBackups(
                BackupFilter(namespace: namespace, environment: request.environment, kind: request.kind, status: request.status),
                pageSize: request.pageSize, pageToken: request.pageToken)
            return .with { $0.backups = page.items; $0.nextPageToken = page.nextPageToken }
        }
        router.unary(Backups.getBackup) { request, context in
            let backup = try await catalog.backup(id: request.id)
            try context.authorize(.viewer, in: backup.namespace)
            return backup
        }
        router.unary(Backups.updateBackup) { request, context in
            let backup = try await catalog.backup(id: request.id)
            try context.authorize(.operator, in: backup.namespace)
            return try await catalog.updateBackupComment(id: request.id, comment: request.comment, actor: context.caller.tokenName)
        }
        router.unary(Backups.deleteBackup) { request, context in
            let backup = try await catalog.backup(id: request.id)
            try context.authorize(.operator, in: backup.namespace)
            _ = try await catalog.deleteBackup(id: request.id, actor: context.caller.tokenName)
            jobs.requestGarbageCollection()
            return DeleteBackupResponse()
        }
        router.unary(Backups.restoreBackup) { request, context in
            let backup = try await catalog.backup(id: request.backupID)
            let targetNamespace = context.namespace(request.targetNamespace)
            // Refused across namespaces whatever the caller may do elsewhere.
            guard targetNamespace == backup.namespace else {
                throw BackupError.permissionDenied(
                    "backup \(backup.id) belongs to namespace \(backup.namespace); restoring into namespace \(targetNamespace) is refused")
            }
            try context.authorize(.operator, in: backup.namespace)
            let job = try await catalog.createRestore(
                backupID: request.backupID, targetNamespace: targetNamespace, targetEnvironment: request.targetEnvironment,
                databaseOnly: request.databaseOnly, acceptVersionMismatch: request.acceptVersionMismatch,
                actor: context.caller.tokenName)
            jobs.wake()
            return job
        }
        router.unary(Backups.listActivity) { request, context in
            let namespace = context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let page = try await catalog.listActivity(namespace: namespace, environment: request.environment,
                                                      pageSize: request.pageSize, pageToken: request.pageToken)
            return .with { $0.activity = page.items; $0.nextPageToken = page.nextPageToken }
        }
    }

    private func registerJobs(into router: inout RPCRouter) {
        router.unary(Backups.getJob) { request, context in
            let job = try await catalog.job(id: request.id)
            try context.authorize(.viewer, in: job.namespace)
            return job
        }
        router.serverStreaming(Backups.watchJob) { request, context, responses in
            var job = try await catalog.job(id: request.id)
            try context.authorize(.viewer, in: job.namespace)
            try await responses.write(job)
            while !job.status.isTerminal {
                try await Task.sleep(for: .milliseconds(100))
                let next = try await catalog.job(id: request.id)
                if next != job { try await responses.write(next) }
                job = next
            }
        }
    }

    private func registerTokens(into router: inout RPCRouter) {
        router.unary(Backups.createToken) { request, context in
            try context.authorize(.admin, in: request.namespace)
            let (token, secret) = try await catalog.createToken(namespace: request.namespace, role: request.role, name: request.name)
            return .with { $0.token = token; $0.secret = secret }
        }
        router.unary(Backups.listTokens) { request, context in
            let namespace = context.namespace(request.namespace)
            try context.authorize(.admin, in: namespace)
            let tokens = try await catalog.listTokens(namespace: namespace)
            return .with { $0.tokens = tokens }
        }
        router.unary(Backups.revokeToken) { request, context in
            let token = try await catalog.token(id: request.id)
            try context.authorize(.admin, in: token.namespace)
            return try await catalog.revokeToken(id: request.id)
        }
    }
}

/// An environment as shown to callers: any password in its connection string
/// is replaced, whether given as `password=…` or in a URI's user part.
func redacted(_ environment: Environment) -> Environment {
    var copy = environment
    copy.databaseURL = copy.databaseURL
        .replacing(/password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)/, with: "password=REDACTED")
        .replacing(/(:\/\/[^:\/@?]*:)[^@\/?]*@/) { "\($0.output.1)REDACTED@" }
    return copy
}
