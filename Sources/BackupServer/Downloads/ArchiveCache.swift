import BackupRules
import BackupStorage
import Foundation

/// The folder where archives are written while they are prepared
/// (`ID.partial`), on this machine, before they go into the blob store,
/// where every backupd process finds them. What may stay is the catalog's
/// to say (`Catalog.expireArchives`); the rest is swept away.
struct ArchiveCache: Sendable {
    let directory: String
    /// Free space the disk keeps beyond an archive about to be written.
    let reservedDiskBytes: UInt64

    init(directory: String, reservedDiskBytes: UInt64) throws {
        try FileSystem.makeFolders(directory)
        self.directory = directory
        self.reservedDiskBytes = reservedDiskBytes
    }

    func partialPath(of archiveID: String) -> String { "\(directory)/\(archiveID).partial" }

    /// Refuses an archive of up to `bytes` that the disk has no room for,
    /// beside `others` bytes of archives still being written. The refusal
    /// names this archive's size only: the disk's state tells what others prepare.
    func requireRoom(for bytes: UInt64, beside others: UInt64 = 0) throws(BackupError) {
        guard FileSystem.hasRoom(for: bytes + others, reserved: reservedDiskBytes, in: directory) else {
            throw .resourceExhausted("the archive cache's disk has too little free space for an archive of up to \(bytes) bytes "
                                     + "(it keeps \(reservedDiskBytes) bytes free); try again later")
        }
    }

    /// Removes every file but those being written for archives
    /// `preparing`; returns how many went. The folder is listed before the
    /// caller asks the catalog what may stay, so an archive begun in
    /// between is never taken for a leftover.
    func sweep(listing: [String], preparing: Set<String>) -> Int {
        var removed = 0
        for name in listing where !(name.hasSuffix(".partial") && preparing.contains(String(name.dropLast(".partial".count)))) {
            if (try? FileSystem.removeIfPresent("\(directory)/\(name)")) != nil { removed += 1 }
        }
        return removed
    }

    func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
    }
}
