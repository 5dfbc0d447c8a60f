import BackupCatalog
import BackupWire

/// The handlers of backups: create, list, get, update, delete, and the activity log.
extension BackupsService {
    func registerBackups(into router: inout RPCRouter) {
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
        router.unary(Backups.listActivity) { request, context in
            let namespace = try context.namespace(request.namespace)
            try context.authorize(.viewer, in: namespace)
            let page = try await catalog.listActivity(namespace: namespace, environment: request.environment,
                                                      pageSize: request.pageSize, pageToken: request.pageToken)
            return fitted(page) { page in .with { $0.activity = page.items; $0.nextPageToken = page.nextPageToken } }
        }
    }
}
