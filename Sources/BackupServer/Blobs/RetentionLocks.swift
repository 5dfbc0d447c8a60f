import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import Logging

/// Object lock (`--s3-object-lock`): the store retains every finished
/// backup's objects until at least the backup's expiry (at most `cap` ahead
/// at a time, extended as time passes: a tenant's retention of years does
/// not bind the bucket's owner for years at once), so neither a compromised
/// backupd nor a mistaken operator can destroy a backup before its
/// retention ends. Each object is retained until the date the backup that
/// needs it longest asks, plus `margin` (a nightly backup that reuses a
/// chunk then extends it once in that long, not every night); a date is
/// never moved earlier. Runs in a task of its own beside jobs, a few
/// backups at a time; a backup that fails is tried again a minute later,
/// behind the others.
struct RetentionLocks: Sendable {
    let catalog: Catalog
    let store: any RetainingStore
    let margin: Duration
    let cap: Duration
    let logger: Logger
    /// Backups retained per call; objects retained at once.
    static let backupsPerRun = 10
    static let inFlight = 8

    /// Retains the objects of backups not yet retained as long as they must
    /// be; returns how many objects it retained and how many backups failed.
    func run() async throws -> (retained: Int, failed: Int) {
        var (retained, failed) = (0, 0)
        for backup in try await catalog.backupsToRetain(limit: Self.backupsPerRun, cap: cap) {
            do {
                retained += try await retain(backup)
            } catch {
                failed += 1
                logger.error("cannot retain the objects of a backup; tried again in a minute",
                             metadata: ["backup": "\(backup.id)", "error": "\(error)"])
            }
        }
        return (retained, failed)
    }

    private func retain(_ backup: BackupToRetain) async throws -> Int {
        let objects = try await catalog.objectsToRetain(backup)
        let until = backup.until.addingTimeInterval(Double(margin.components.seconds))
        let store = self.store
        for start in stride(from: 0, to: max(1, objects.count), by: 1000) {
            let batch = Array(objects[min(start, objects.count)..<min(start + 1000, objects.count)])
            _ = try await concurrently(batch, inFlight: Self.inFlight) { try await store.retain($0, until: until) }
            try await catalog.recordRetention(of: batch, until: until, completing: start + 1000 >= objects.count ? backup : nil)
        }
        return objects.count
    }
}
