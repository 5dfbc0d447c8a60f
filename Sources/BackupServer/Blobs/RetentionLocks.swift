import BackupCatalog
import BackupRules
import BackupStorage
import Foundation

/// Object lock (`--s3-object-lock`): the store retains every finished
/// backup's objects until at least the backup's expiry, so neither a
/// compromised backupd nor a mistaken operator can destroy a backup before
/// its retention ends. Each object is retained until the expiry of the
/// backup that needs it longest, plus `margin` (a nightly backup that reuses
/// a chunk then extends it once in that long, not every night); a date is
/// never moved earlier. Runs beside jobs, a few backups at a time, soon
/// after each backup finishes and again after a failure.
struct RetentionLocks: Sendable {
    let catalog: Catalog
    let store: any RetainingStore
    let margin: Duration
    /// Backups retained per call; objects retained at once.
    static let backupsPerRun = 10
    static let inFlight = 8

    /// Retains the objects of backups not yet retained until their expiry; returns how many objects it retained.
    func run() async throws -> Int {
        var retained = 0
        for backup in try await catalog.backupsToRetain(limit: Self.backupsPerRun) {
            let objects = try await catalog.objectsToRetain(backup)
            let until = backup.expires.addingTimeInterval(Double(margin.components.seconds))
            for start in stride(from: 0, to: objects.count, by: 1000) {
                let batch = Array(objects[start..<min(start + 1000, objects.count)])
                try await retain(batch, until: until)
                let last = start + batch.count == objects.count
                try await catalog.recordRetention(of: batch, until: until, completing: last ? backup : nil)
                retained += batch.count
            }
            if objects.isEmpty { try await catalog.recordRetention(of: [], until: until, completing: backup) }
        }
        return retained
    }

    /// Retains `objects` until `until`, `inFlight` requests at a time.
    private func retain(_ objects: [ContentHash], until: Date) async throws {
        let store = self.store
        _ = try await concurrently(objects, inFlight: Self.inFlight) { try await store.retain($0, until: until) }
    }
}
