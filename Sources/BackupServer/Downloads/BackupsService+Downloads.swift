import BackupCatalog
import BackupRules
import BackupWire

/// The handlers of downloads: an archive asked for, and its signed URL.
extension BackupsService {
    func registerDownloads(into router: inout RPCRouter) {
        router.unary(Backups.requestDownload) { request, context in
            let backup = try await reachableBackup(request.backupID, .operator, context)
            guard links.keys != nil else {
                throw BackupError.failedPrecondition("this server signs no download URLs; it must be started with --download-keys")
            }
            let reservation = try await catalog.requestDownload(
                backupID: backup.id, databaseOnly: request.databaseOnly, actor: context.caller.tokenName,
                urlLifetime: downloads.urlLifetime, cacheBytes: downloads.cacheBytes, namespaceShare: downloads.cacheNamespaceShare)
            if reservation.queuedJob {
                do {
                    try archiveCache.requireRoom(for: reservation.archiveBytes, beside: reservation.othersPreparing)
                } catch {
                    try await catalog.withdrawDownload(reservation)
                    throw error
                }
                jobs.wake()
            }
            return links.message(reservation.record)
        }
        router.unary(Backups.getDownload) { request, context in
            let record = try await catalog.download(id: request.id)
            try context.authorize(.operator, reaching: record.namespace, orAnswer: .notFound("download \(record.id) does not exist"))
            return links.message(record)
        }
    }
}
