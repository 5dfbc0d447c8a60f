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
            let (backupID, actor) = (backup.id, context.caller.tokenName)
            // Once the reservation may have committed, the check and its withdrawal run to their end even if the
            // client cancels or goes: a reservation is never left behind.
            let record = try await withoutCancellation { [catalog, downloads, archiveCache, jobs] in
                let reservation = try await catalog.requestDownload(
                    backupID: backupID, databaseOnly: request.databaseOnly, actor: actor,
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
                return reservation.record
            }
            return links.message(record)
        }
        router.unary(Backups.getDownload) { request, context in
            let record = try await catalog.download(id: request.id)
            try context.authorize(.operator, reaching: record.namespace, orAnswer: .notFound("download \(record.id) does not exist"))
            return links.message(record)
        }
    }
}
