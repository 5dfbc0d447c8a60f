import BackupRules
import BackupStorage
import Foundation
import NIOCore

/// The folder where prepared archives wait for their downloads: one file
/// per archive, named by its id (`ID.partial` while it is being written).
/// What may stay is the catalog's to say (`Catalog.expireArchives`); the
/// rest is swept away.
struct ArchiveCache: Sendable {
    let directory: String
    /// Free space the disk keeps beyond an archive about to be written.
    let reservedDiskBytes: UInt64

    init(directory: String, reservedDiskBytes: UInt64) throws {
        try FileSystem.makeFolders(directory)
        self.directory = directory
        self.reservedDiskBytes = reservedDiskBytes
    }

    func path(of archiveID: String) -> String { "\(directory)/\(archiveID)" }

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

    /// Removes every file but the archives that are `ready` and those being
    /// written for archives `preparing`; returns how many went. The folder
    /// is listed before the caller asks the catalog what may stay, so an
    /// archive begun in between is never taken for a leftover. A preparing
    /// archive keeps its final name too: its job renames the file before
    /// the catalog calls it ready.
    func sweep(listing: [String], keeping ready: Set<String>, preparing: Set<String>) -> Int {
        var removed = 0
        for name in listing {
            let keep = name.hasSuffix(".partial")
                ? preparing.contains(String(name.dropLast(".partial".count)))
                : ready.contains(name) || preparing.contains(name)
            if !keep, (try? FileSystem.removeIfPresent("\(directory)/\(name)")) != nil { removed += 1 }
        }
        return removed
    }

    /// Up to `length` bytes of a file from `offset`, the file opened and
    /// closed again: a reader holds no descriptor between reads.
    static func read(_ path: String, at offset: UInt64, length: Int) throws -> ByteBuffer {
        let file = try LocalFile.open(path)
        var buffer = ByteBuffer()
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: space[0..<length]), at: offset)
        }
        return buffer
    }

    func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
    }
}
