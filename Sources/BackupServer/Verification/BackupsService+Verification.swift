import BackupCatalog
import BackupWire

/// The handler of a verification: queued here, run by `VerifyJob`.
extension BackupsService {
    func registerVerification(into router: inout RPCRouter) {
        router.unary(Backups.verifyBackup) { request, context in
            let backup = try await reachableBackup(request.id, .operator, context)
            let job = try await catalog.requestVerification(backupID: backup.id, actor: context.caller.tokenName)
            jobs.wake()
            return job
        }
    }
}
