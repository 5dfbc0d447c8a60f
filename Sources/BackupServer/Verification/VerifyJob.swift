import BackupCatalog
import BackupRules
import BackupStorage
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
    let clock: any ServiceClock
    let stores: NamespaceStores
    /// Where the job writes its scratch files (a dump for pg_restore), named for the job.
    let scratchDirectory: String
    let threadPool: NIOThreadPool
    let tools: PostgresTools
    /// Free space the blob store's disk keeps beyond the dump's scratch copy.
    let reservedDiskBytes: UInt64

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let jobID = claimed.job.id
        let backup = try await catalog.backup(id: claimed.job.backupID)
        let files = try await catalog.backupFiles(id: backup.id)
        let dump = try await catalog.dump(ofBackup: backup.id)
        let progress = ProgressReporter(catalog: catalog, jobID: jobID, clock: clock)
        await progress.update(done: 0, total: backup.databaseBytes + backup.filesBytes, phase: "reading every blob and checking its hash")
        // Named as the scratch sweep knows a job's dump, so a dead process's copy goes too.
        let dumpPath = "\(scratchDirectory)/dump-\(jobID).backup"
        defer { FileSystem.remove(dumpPath) }
        let (blobStore, reserved) = (try await stores.store(for: backup.namespace), self.reservedDiskBytes)
        // The backup is pinned while this job runs, so every blob it reads stays referenced and is never collected.
        var (problems, dumpIntact) = try await progress.reporting(on: threadPool) { interruption, report in
            var problems: [VerifyProblem] = []
            var done: UInt64 = 0
            let count: (UnsafeRawBufferPointer) -> Void = { done += UInt64($0.count); report(done) }
            try requireRoom(for: dump.size, reserved: reserved, in: scratchDirectory)
            let copy = try ScratchFile(path: dumpPath)
            let toCopy: (UnsafeRawBufferPointer) throws -> Void = { try copy.write($0); count($0) }
            var dumpIntact = true
            switch dump {
            case .blob(let blob):
                dumpIntact = try Self.check(SnapshotArchive.dumpPath, blob.hash, problems: &problems) {
                    _ = try blobStore.read(blob.hash, interruption: interruption, toCopy)
                }
            case .chunks(_, _, let chunks):
                // Every chunk is read, so every damaged one is named.
                for (index, chunk) in chunks.enumerated() {
                    let name = "\(SnapshotArchive.dumpPath) (chunk \(index + 1) of \(chunks.count))"
                    dumpIntact = try Self.check(name, chunk.blob.hash, problems: &problems) {
                        try chunk.read(from: blobStore, interruption: interruption, toCopy)
                    } && dumpIntact
                }
            }
            for file in files {
                guard let hash = ContentHash(hex: file.hash) else {
                    problems.append(.with { $0.name = file.key; $0.sha256 = file.hash; $0.problem = "not a SHA-256" })
                    continue
                }
                _ = try Self.check(file.key, hash, problems: &problems) {
                    _ = try blobStore.read(hash, interruption: interruption, count)
                }
            }
            return (problems, dumpIntact)
        }
        if dumpIntact {
            await progress.update(phase: "listing the dump with pg_restore --list")
            do {
                _ = try await tools.listDump(dumpPath, scratch: "\(scratchDirectory)/list-\(jobID)")
            } catch let failure as ToolFailure {
                problems.append(.with {
                    $0.name = SnapshotArchive.dumpPath; $0.sha256 = backup.dumpSHA256; $0.problem = "pg_restore --list: \(failure)"
                })
            }
        }
        await progress.update(phase: "recording the result")
        try await catalog.finishVerification(jobID: jobID, owner: owner, checked: files.count + dump.blobs.count, problems: problems)
    }

    /// Reads one blob (`read`); a blob missing, not matching its hash, or
    /// holding other content than its chunk's adds a problem naming `name`
    /// and `hash`. Returns whether it read intact.
    private static func check(_ name: String, _ hash: ContentHash, problems: inout [VerifyProblem], _ read: () throws -> Void) throws -> Bool {
        let problem: String
        do {
            try read()
            return true
        } catch let error as DumpChunkError {
            problem = "corrupt: \(error)"
        } catch BlobStoreError.missing {
            problem = "missing from the blob store"
        } catch BlobStoreError.corrupt(_, let actual) {
            problem = "corrupt: its content hashes to \(actual.hex)"
        } catch BlobStoreError.unreadable(_, let reason) {
            problem = "corrupt: it \(reason)"
        } catch BlobStoreError.cannotRead(_, let code) {
            problem = "unreadable: \(String(cString: strerror(code)))"
        }
        problems.append(.with { $0.name = name; $0.sha256 = hash.hex; $0.problem = problem })
        return false
    }
}
