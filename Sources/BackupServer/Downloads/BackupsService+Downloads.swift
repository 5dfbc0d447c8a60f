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
            // The disk is checked before the request is recorded: from then on its job may be taken up by any process.
            if let room = try await catalog.archiveRoomNeeded(backupID: backup.id, databaseOnly: request.databaseOnly) {
                try archiveCache.requireRoom(for: room.archiveBytes, beside: room.othersPreparing)
            }
            let (record, queuedJob) = try await catalog.requestDownload(
                backupID: backup.id, databaseOnly: request.databaseOnly, actor: context.caller.tokenName,
                urlLifetime: downloads.urlLifetime, cacheBytes: downloads.cacheBytes, namespaceShare: downloads.cacheNamespaceShare)
            if queuedJob { jobs.wake() }
            return links.message(record)
        }
        router.unary(Backups.getDownload) { request, context in
            let record = try await catalog.download(id: request.id)
            try context.authorize(.operator, reaching: record.namespace, orAnswer: .notFound("download \(record.id) does not exist"))
            return links.message(record)
        }
    }
}
