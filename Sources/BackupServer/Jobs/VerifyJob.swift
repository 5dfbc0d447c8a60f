import BackupCatalog
import BackupCore
import BackupWire
import Foundation
import NIOPosix

/// Proves a backup's content intact, or names what is not: every blob it
/// refers to is read again through the blob store's streaming interface and
/// hashed (a blob missing or whose content no longer has its hash is a
/// problem, named by its file key and hash), and a dump that reads intact
/// must be listed by `pg_restore --list`. The finding is kept on the backup;
/// the job fails when there is any problem. Nothing is changed or repaired.
struct VerifyJob: Sendable {
    let catalog: Catalog
    let blobStore: any BlobStore
    let threadPool: NIOThreadPool
    let tools: PostgresTools
    /// Free space the blob store's disk keeps beyond the dump's scratch copy.
    let reservedDiskBytes: UInt64

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let jobID = claimed.job.id
        let backup = try await catalog.backup(id: claimed.job.backupID)
        let files = try await catalog.backupFiles(id: backup.id)
        let progress = ProgressReporter(catalog: catalog, jobID: jobID)
        await progress.update(done: 0, total: backup.databaseBytes + backup.filesBytes, phase: "reading every blob and checking its hash")
        // Named as the scratch sweep knows a job's dump, so a dead process's copy goes too.
        let dumpPath = "\(blobStore.scratchDirectory)/dump-\(jobID).backup"
        defer { unlink(dumpPath) }
        let (blobStore, reserved) = (self.blobStore, self.reservedDiskBytes)
        var (problems, dumpIntact) = try await catalog.withSharedBlobLock(store: blobStore) { _ in
            try await progress.reporting(on: threadPool) { interruption, report in
                var problems: [VerifyProblem] = []
                var done: UInt64 = 0
                let count: (UnsafeRawBufferPointer) -> Void = { done += UInt64($0.count); report(done) }
                var dumpIntact = false
                if let dump = ContentHash(hex: backup.dumpSHA256) {
                    try requireRoom(for: backup.databaseBytes, reserved: reserved, in: blobStore.scratchDirectory)
                    let copy = try ScratchFile(path: dumpPath)
                    dumpIntact = try Self.check(SnapshotArchive.dumpPath, dump, in: blobStore, interruption: interruption,
                                                problems: &problems) { try copy.write($0); count($0) }
                } else {
                    problems.append(.with { $0.name = SnapshotArchive.dumpPath; $0.problem = "the backup names no dump" })
                }
                for file in files {
                    guard let hash = ContentHash(hex: file.hash) else {
                        problems.append(.with { $0.name = file.key; $0.sha256 = file.hash; $0.problem = "not a SHA-256" })
                        continue
                    }
                    _ = try Self.check(file.key, hash, in: blobStore, interruption: interruption, problems: &problems, count)
                }
                return (problems, dumpIntact)
            }
        }
        if dumpIntact {
            await progress.update(phase: "listing the dump with pg_restore --list")
            do {
                _ = try await tools.listDump(dumpPath, scratch: "\(blobStore.scratchDirectory)/list-\(jobID)")
            } catch let failure as ToolFailure {
                problems.append(.with {
                    $0.name = SnapshotArchive.dumpPath; $0.sha256 = backup.dumpSHA256; $0.problem = "pg_restore --list: \(failure)"
                })
            }
        }
        await progress.update(phase: "recording the result")
        try await catalog.finishVerification(jobID: jobID, owner: owner, checked: files.count + 1, problems: problems)
    }

    /// Reads one blob, handing its content to `consume`; a blob missing or
    /// not matching its hash adds a problem. Returns whether it read intact.
    private static func check(_ name: String, _ hash: ContentHash, in store: any BlobStore, interruption: Interruption,
                              problems: inout [VerifyProblem], _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> Bool {
        let problem: String
        do {
            _ = try store.read(hash, interruption: interruption, consume)
            return true
        } catch BlobStoreError.missing {
            problem = "missing from the blob store"
        } catch BlobStoreError.corrupt(_, let actual) {
            problem = "corrupt: its content hashes to \(actual.hex)"
        } catch BlobStoreError.cannotRead(_, let code) {
            problem = "unreadable: \(String(cString: strerror(code)))"
        }
        problems.append(.with { $0.name = name; $0.sha256 = hash.hex; $0.problem = problem })
        return false
    }
}
