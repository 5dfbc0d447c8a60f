import BackupCatalog
import BackupRules
import BackupWire

/// The handler of a restore: checked here, run by `RestoreJob`.
extension BackupsService {
    func registerRestores(into router: inout RPCRouter) {
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
    }
}
