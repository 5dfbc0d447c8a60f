import BackupCore
import Foundation

/// The folder where prepared archives wait for their downloads: one file
/// per archive, named by its id (`ID.partial` while it is being written).
/// What may stay is the catalog's to say (`Catalog.expireArchives`); the
/// rest is swept away.
struct ArchiveCache: Sendable {
    let directory: String
    /// Free space the disk keeps beyond an archive about to be written.
    let reservedDiskBytes: UInt64

    init(directory: String, reservedDiskBytes: UInt64) throws {
        try makeDirectories(directory)
        self.directory = directory
        self.reservedDiskBytes = reservedDiskBytes
    }

    func path(of archiveID: String) -> String { "\(directory)/\(archiveID)" }

    func partialPath(of archiveID: String) -> String { "\(directory)/\(archiveID).partial" }

    /// Refuses an archive of up to `bytes` that the disk has no room for.
    func requireRoom(for bytes: UInt64) throws(BackupError) {
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { return }
        let free = UInt64(info.f_bavail) * UInt64(info.f_frsize)
        guard free >= bytes + reservedDiskBytes else {
            throw .resourceExhausted("the archive cache's disk has \(free) bytes free; an archive of up to \(bytes) bytes "
                                     + "would leave less than the \(reservedDiskBytes) kept free")
        }
    }

    /// Removes every file but the archives that are `ready` and those being
    /// written for archives `preparing`; returns how many went. The folder
    /// is listed before the caller asks the catalog what may stay, so an
    /// archive begun in between is never taken for a leftover.
    func sweep(listing: [String], keeping ready: Set<String>, preparing: Set<String>) -> Int {
        var removed = 0
        for name in listing {
            let keep = name.hasSuffix(".partial") ? preparing.contains(String(name.dropLast(".partial".count))) : ready.contains(name)
            if !keep, unlink("\(directory)/\(name)") == 0 { removed += 1 }
        }
        return removed
    }

    func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
    }
}
