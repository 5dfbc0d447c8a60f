import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import Foundation
import Logging
import NIOPosix

/// Restores a snapshot into an environment without ever leaving it half
/// restored. Everything is built beside the target first: the dump goes into
/// a staging database, and the files into a staging folder next to the file
/// store. Each is checked. Only then is the target swapped: the folders by
/// two renames, then the databases by two renames in one transaction. A
/// failure before the swap drops the staging copies and leaves the target as
/// it was. A failed swap is undone. The target's previous state is kept
/// (`…_prerestore`) until the next restore, so an operator can go back.
///
/// The app database's user must be allowed to create databases and must own
/// the target database.
struct RestoreJob: Sendable {
    let catalog: Catalog
    let stores: NamespaceStores
    /// Where the job writes its scratch files (a dump for pg_restore), named for the job.
    let scratchDirectory: String
    let databases: AppDatabases
    let threadPool: NIOThreadPool
    let tools: PostgresTools
    /// The clock of the tool's stall watch: the runner's.
    let clock: any ServiceClock
    let parallelJobs: Int
    /// Keep the target's previous database and files (`…_prerestore`) until
    /// the next restore, or drop them as soon as the restore succeeds.
    let keepPrevious: Bool
    /// Fault injection for the recovery tests: die right after recording this step.
    let dieAfterStep: RestoreStep?
    let logger: Logger

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let work = try await catalog.restoreWork(jobID: claimed.job.id)
        let progress = ProgressReporter(catalog: catalog, jobID: claimed.job.id, clock: clock)
        let source = "\(work.backup.namespace)/\(work.backup.environment)"
        let plan = try await makePlan(claimed, work)
        let finished = "from \(source)" + (work.databaseOnly ? ", database only" : "")
        var path = RestoreForwardPath()
        do {
            let dumpPath = scratchDump(claimed.job.id)
            defer { FileSystem.remove(dumpPath) }
            let stagingURL = try databases.connectionString(claimed.environment.databaseURL, database: plan.stagingDatabase)
            let placed = try await stage(claimed, work, plan, dumpPath: dumpPath, stagingURL: stagingURL, progress: progress)
            try await carryOut(path.handle(.staged), claimed, plan, owner: owner, finished: finished)
            try await check(work, placed: placed, dumpPath: dumpPath, stagingURL: stagingURL, progress: progress)
            try await carryOut(path.handle(.checked), claimed, plan, owner: owner, finished: finished)
        } catch {
            // Cleaned up even when the job was cancelled.
            try await withoutCancellation { [path] in
                var path = path
                try await carryOut(path.handle(.failed), claimed, plan, owner: owner, finished: finished)
            }
            throw error
        }
        await progress.update(phase: "swapping")
        // Once begun, the swap and its record run to their end: a
        // shutdown must not leave a swapped target recorded as FAILED.
        try await withoutCancellation { [path] in
            try await swapIn(claimed, plan, from: path, owner: owner, finished: finished)
        }
    }

    /// Carries out what the forward path says: records a step, ends the
    /// restore, or leaves it to recovery (`unseen` says why). After a
    /// rollback the caller throws its failure.
    private func carryOut(_ actions: [RestoreForwardPath.Action], _ claimed: ClaimedJob, _ plan: RestorePlan, owner: String,
                          finished: String, unseen: String = "") async throws {
        for action in actions {
            switch action {
            case .record(let step):
                try await reached(step, claimed)
            case .end(let ending):
                try await end(ending, claimed, plan, owner: owner, finished: finished)
            case .leaveToRecovery:
                throw RestoreRecoveryDeferred(reason: unseen)
            }
        }
    }

    /// Ends a restore, forward or in recovery alike. Complete: the restore
    /// is in place; the superseded (and unkept previous) copies go, or are
    /// recorded for the sweep, before the job is FINISHED (`finished` is its
    /// detail), so whoever sees it end sees them gone. Roll back: the
    /// target's own folders are put back if they were swapped and the
    /// staging copies removed; the caller then fails the job with its reason.
    /// Restored files that cannot be moved out of the store yet leave the
    /// restore to recovery: nothing is decided while the target is mixed.
    private func end(_ ending: RestoreRecovery, _ claimed: ClaimedJob, _ plan: RestorePlan, owner: String, finished: String) async throws {
        let folders = Self.folders(plan, jobID: claimed.job.id)
        switch ending {
        case .complete:
            folders.removeJobMarker()
            await removeLeftovers(claimed.job.id, claimed.environment, plan, restoreInPlace: true, droppingPrevious: !keepPrevious)
            try await catalog.finishJob(id: claimed.job.id, owner: owner, detail: finished)
        case .rollBack(let undoFolderSwap):
            if undoFolderSwap { folders.unswap() }
            // Before the swap no folder was renamed: a marker in the store then is the tenant's, not the restored files.
            guard !(undoFolderSwap && folders.restoredFilesInStore) else {
                throw RestoreRecoveryDeferred(reason: "the restored files cannot be moved out of \(plan.fileStore) yet")
            }
            await removeLeftovers(claimed.job.id, claimed.environment, plan, restoreInPlace: false)
        }
    }

    /// Names the staging and previous database and folders and records them
    /// before any of them is created.
    private func makePlan(_ claimed: ClaimedJob, _ work: RestoreWork) async throws -> RestorePlan {
        let environment = claimed.environment
        let targetDatabase = try await onAppServer(environment, database: nil) { connection in
            try connection.query("SELECT current_database() AS name")[0].string("name")
        }
        let suffix = String(claimed.job.id.prefix(8))
        var plan = RestorePlan()
        plan.targetDatabase = targetDatabase
        plan.stagingDatabase = databaseName(targetDatabase, suffix: "_restore_\(suffix)")
        plan.previousDatabase = databaseName(targetDatabase, suffix: "_prerestore")
        plan.supersededDatabase = databaseName(targetDatabase, suffix: "_restore_\(suffix)_old")
        if !work.databaseOnly {
            plan.fileStore = environment.fileStorePath
            plan.stagingFolder = "\(environment.fileStorePath).restore-\(suffix)"
            plan.previousFolder = "\(environment.fileStorePath).prerestore"
            plan.supersededFolder = "\(environment.fileStorePath).restore-\(suffix)-old"
        }
        try await catalog.recordRestorePlan(jobID: claimed.job.id, plan)
        return plan
    }

    /// The staging database and folder, complete; returns how many files
    /// were placed and their bytes (none for a database-only restore).
    private func stage(_ claimed: ClaimedJob, _ work: RestoreWork, _ plan: RestorePlan, dumpPath: String, stagingURL: String,
                       progress: ProgressReporter) async throws -> (count: UInt64, bytes: UInt64)? {
        let environment = claimed.environment
        let files = work.databaseOnly ? [] : try await catalog.backupFiles(id: work.backup.id)
        // The backup's content is its own namespace's, whichever environment it is restored into.
        let blobStore = try await stores.store(for: work.backup.namespace)
        let filesBytes = files.reduce(UInt64(0)) { $0 + $1.size }
        let databaseBytes = work.sourceDatabaseBytes

        await progress.update(part: "database", done: 0, total: databaseBytes)
        await progress.update(part: "files", done: 0, total: filesBytes)
        await progress.update(phase: "restoring the database into \(plan.stagingDatabase)"
                              + (work.databaseOnly ? "" : " and placing \(files.count) files in \(plan.stagingFolder)"))
        // The files are placed while the dump is reassembled and restored; whichever fails first stops the other.
        return try await withThrowingTaskGroup(of: (count: UInt64, bytes: UInt64)?.self) { group in
            group.addTask {
                try await restoreDatabase(work, from: blobStore, dumpPath: dumpPath, into: stagingURL, environment, plan, jobID: claimed.job.id,
                                          progress: progress)
                return nil
            }
            if !work.databaseOnly {
                group.addTask { try await stageFiles(files, from: blobStore, claimed, plan, progress: progress) }
            }
            var placed: (count: UInt64, bytes: UInt64)?
            for try await result in group where result != nil { placed = result }
            return placed
        }
    }

    /// Checks the staging copies: the database against the dump, the files
    /// placed against the backup's own totals, recorded when it was made.
    private func check(_ work: RestoreWork, placed: (count: UInt64, bytes: UInt64)?, dumpPath: String, stagingURL: String,
                       progress: ProgressReporter) async throws {
        await progress.update(phase: "checking the restored database and files")
        try await checkContents(of: dumpPath, in: stagingURL)
        if let placed, placed.count != work.backup.fileCount || placed.bytes != work.backup.filesBytes {
            throw JobFailure(description: "the restore placed \(placed.count) files (\(placed.bytes) bytes) where backup "
                             + "\(work.backup.id) holds \(work.backup.fileCount) (\(work.backup.filesBytes) bytes); the target is unchanged")
        }
    }

    /// Reassembles the dump at `dumpPath` and restores it into a new staging
    /// database made like the target (encoding, collation).
    private func restoreDatabase(_ work: RestoreWork, from blobStore: any BlobStore, dumpPath: String, into stagingURL: String, _ environment: Environment,
                                 _ plan: RestorePlan, jobID: String, progress: ProgressReporter) async throws {
        let dump = try await catalog.dump(ofBackup: work.backup.id)
        do {
            try await progress.reporting(on: threadPool, to: .none) { [blobStore] interruption, _ in
                try dump.materialize(at: dumpPath, from: blobStore, interruption: interruption)
            }
        } catch let error as BlobStoreError {
            throw JobFailure(description: "the backup's database dump cannot be used: \(told(error))")
        } catch let error as DumpReadError {
            throw JobFailure(description: "the backup's database dump cannot be used: \(told(error))")
        }
        if case .chunks = dump {
            // Written into a pipe, the dump has no data offsets; with them, pg_restore --jobs goes straight to each table.
            try await progress.reporting(on: threadPool, to: .none) { interruption, _ in
                _ = try DumpOffsets.fill(dumpPath, interruption: interruption)
            }
        }

        let target = plan.targetDatabase
        let stagingMarker = Self.stagingMarker(of: target, jobID: jobID)
        let stagingOID = try await onAppServer(environment, database: "postgres") { connection in
            guard let settings = try connection.query("""
                SELECT pg_encoding_to_char(encoding) AS encoding, datcollate, datctype FROM pg_database WHERE datname = $1
                """, target).first else {
                throw JobFailure(description: "database \(target) is gone from its server (renamed or dropped since the restore began); "
                                 + "the target is unchanged")
            }
            // Left by an earlier attempt of this same job, or someone else's: only ours may go.
            guard try dropDatabase(plan.stagingDatabase, carrying: stagingMarker, on: connection) != .notOurs else {
                throw JobFailure(description: "database \(plan.stagingDatabase) exists and was not made by this restore; rename or drop it")
            }
            try connection.query("""
                CREATE DATABASE \(ConnectionString.quoted(plan.stagingDatabase)) TEMPLATE template0
                ENCODING '\(settings.string("encoding"))' LC_COLLATE '\(settings.string("datcollate"))' LC_CTYPE '\(settings.string("datctype"))'
                """)
            try connection.query("COMMENT ON DATABASE \(ConnectionString.quoted(plan.stagingDatabase)) IS \(Self.literal(stagingMarker))")
            guard let oid = try Self.oid(of: plan.stagingDatabase, on: connection) else {
                throw JobFailure(description: "the staging database \(plan.stagingDatabase) was dropped as soon as it was made; "
                                 + "the target is unchanged")
            }
            return oid
        }
        try await catalog.recordStagingDatabase(jobID: jobID, oid: stagingOID)
        let databaseBytes = work.sourceDatabaseBytes
        try await restoreDump(dumpPath, into: stagingURL) { done in
            await progress.update(part: "database", done: min(done, databaseBytes))
        }
    }

    /// Places the backup's files in the staging folder; returns how many and how many bytes.
    private func stageFiles(_ files: [(key: String, hash: String, size: UInt64)], from blobStore: any BlobStore, _ claimed: ClaimedJob, _ plan: RestorePlan,
                            progress: ProgressReporter) async throws -> (count: UInt64, bytes: UInt64) {
        // Restored files belong to whoever owns the target store, with its mode; never to backupd. The
        // staging folder stays private to backupd until every file is in it, then is handed over from
        // the bottom up, so its new owner cannot swap a folder for a link while backupd writes there.
        // Every file goes in relative to the staging folder held open: a tenant who renames it away or puts a
        // link in its place while the restore runs cannot send a file anywhere else.
        let (staging, owner) = try await threadPool.runIfActive { try Self.folders(plan, jobID: claimed.job.id).makeStaging() }
        var placed: (count: UInt64, bytes: UInt64) = (0, 0)
        try await inBatches(files, threadPool: threadPool) { file in
            guard let hash = ContentHash(hex: file.hash) else {
                throw JobFailure(description: "file document \(file.key) has no valid content hash")
            }
            let relativePath = try FileStoreLayout.relativePath(forKey: file.key)
            do {
                try blobStore.place(hash, into: try staging.createFile(relativePath, owner: owner.forFiles))
            } catch let error as BlobStoreError {
                throw JobFailure(description: "file document \(file.key) cannot be restored: \(told(error))")
            }
            return file.size
        } completed: { sizes in
            placed.count += UInt64(sizes.count)
            placed.bytes += sizes.reduce(0, +)
            await progress.update(part: "files", done: placed.bytes)
        }
        try await threadPool.runIfActive { try staging.applyOwnership(folders: owner, files: owner.forFiles) }
        return placed
    }

    /// Records that the restore has reached `step`. With the fault-injection
    /// setting naming that step, backupd then dies on the spot (SIGKILL), as
    /// the recovery tests need.
    private func reached(_ step: RestoreStep, _ claimed: ClaimedJob) async throws {
        try await catalog.recordRestoreStep(jobID: claimed.job.id, step)
        if step == dieAfterStep { kill(getpid(), SIGKILL) }
    }

    /// Runs pg_restore into the staging database, reporting its size as it grows.
    private func restoreDump(_ dumpPath: String, into stagingURL: String,
                             progress: @escaping @Sendable (UInt64) async -> Void) async throws {
        // One connection watches the size; it closes when this returns, before the swap.
        let monitor = try? await databases.stagingSession(stagingURL, threadPool: threadPool)
        try await runPostgresTool(tools.pgRestore, [
            "--no-owner", "--no-privileges", "--exit-on-error", "--jobs=\(parallelJobs)", dumpPath,
        ], database: stagingURL, stallTimeout: tools.stallTimeout, clock: clock) {
            guard let monitor, let size = try? await monitor.runCancellable({
                try $0.query("SELECT pg_database_size(current_database()) AS size")[0].uint64("size")
            }) else { return 0 }
            await progress(size)
            return size
        }
    }

    /// The staging database must hold every object the dump's table of
    /// contents lists (schemas, tables, views, materialized views, sequences,
    /// indexes, constraints, triggers, types, domains, large objects), and
    /// every sequence at the value the dump sets.
    private func checkContents(of dumpPath: String, in stagingURL: String) async throws {
        let scratch = scratchDirectory
        let listingPath = "\(scratch)/list-\(UUID().uuidString)"
        defer { FileSystem.remove(listingPath) }
        try await runSubprocess(tools.pgRestore, ["--list", "--file=\(listingPath)", dumpPath])
        let listing = DumpListing(try String(contentsOfFile: listingPath, encoding: .utf8))

        var sequences: [(sequence: String, value: Int64, called: Bool)] = []
        if !listing.sequenceSetLines.isEmpty {
            let setsPath = "\(scratch)/sequences-\(UUID().uuidString)", scriptPath = setsPath + ".sql"
            defer { FileSystem.remove(setsPath); FileSystem.remove(scriptPath) }
            try (listing.sequenceSetLines.joined(separator: "\n") + "\n").write(toFile: setsPath, atomically: false, encoding: .utf8)
            try await runSubprocess(tools.pgRestore, ["--use-list=\(setsPath)", "--file=\(scriptPath)", dumpPath])
            sequences = DumpListing.sequenceValues(in: try String(contentsOfFile: scriptPath, encoding: .utf8))
        }

        let (missing, wrongSequences) = try await databases.stagingSession(stagingURL, threadPool: threadPool).runCancellable { [sequences] connection in
            let present = Set(try connection.query(DumpListing.catalogNamesQuery).map {
                DumpListing.CatalogName(catalog: Int($0.int64("catalog")), name: $0.string("name"))
            })
            let wrong = try sequences.filter { expected in
                let last = try connection.query("SELECT pg_sequence_last_value($1::regclass) AS value", expected.sequence)[0]["value"]
                return last != (expected.called ? String(expected.value) : nil)
            }
            return (listing.missing(from: present), wrong.map(\.sequence))
        }
        guard missing.isEmpty else {
            throw JobFailure(description: "the restored database lacks \(missing.count) of the dump's \(listing.objects.count) objects: "
                             + missing.prefix(5).map(\.description).joined(separator: ", "))
        }
        guard wrongSequences.isEmpty else {
            throw JobFailure(description: "restored sequences differ from the dump: " + wrongSequences.prefix(5).joined(separator: ", "))
        }
    }

    /// Swaps the staging copies in: folders first, then the databases in
    /// one transaction, and completes the restore. The previous copies are
    /// renamed aside (superseded), not dropped, so a swap that fails puts
    /// everything back as it was; a `_prerestore` database that is not the
    /// target's previous copy (its marker says whose it is) is never
    /// touched. Whether the database swap committed is known by whose oid
    /// the target's name has; when that cannot be seen, recovery decides later.
    private func swapIn(_ claimed: ClaimedJob, _ plan: RestorePlan, from start: RestoreForwardPath, owner: String,
                        finished: String) async throws {
        var path = start
        func handle(_ event: RestoreForwardPath.Event, unseen: String = "") async throws {
            try await carryOut(path.handle(event), claimed, plan, owner: owner, finished: finished, unseen: unseen)
        }
        let jobID = claimed.job.id
        let swap: (outcome: RestoreForwardPath.DatabaseSwapOutcome, failure: (any Error)?)
        do {
            try await handle(.swapBegins)
            let (stagingOID, previousExists) = try await swapTargets(claimed.environment, plan, jobID: jobID)
            if !plan.fileStore.isEmpty {
                try await threadPool.runIfActive { try Self.folders(plan, jobID: jobID).swap() }
            }
            try await handle(.foldersSwapped)
            swap = await swapDatabases(claimed.environment, plan, stagingOID: stagingOID, previousExists: previousExists)
        } catch {
            try await handle(.failed)
            throw error
        }
        switch swap.outcome {
        case .committed:
            do {
                try await handle(.databaseSwap(.committed))
            } catch {
                try await handle(.failed, unseen: "the restore is in place and completing it failed: \(describeJobError(error))")
                throw error
            }
        case .notCommitted:
            try await handle(.databaseSwap(.notCommitted))
            throw swap.failure ?? JobFailure(description: "the database swap failed, the target is unchanged")
        case .unseen:
            try await handle(.databaseSwap(.unseen),
                             unseen: "the database swap's outcome cannot be seen: \(swap.failure.map(describeJobError) ?? "")")
        }
    }

    /// Refuses the swap before anything moves unless the staging database
    /// is the one this restore made and checked, and the previous copy (if
    /// any) this target's own. Returns the staging database's oid and whether
    /// there is a previous copy.
    private func swapTargets(_ environment: Environment, _ plan: RestorePlan, jobID: String) async throws -> (stagingOID: Int64, previousExists: Bool) {
        let previousMarker = Self.previousMarker(of: plan.targetDatabase)
        let stagingMarker = Self.stagingMarker(of: plan.targetDatabase, jobID: jobID)
        return try await onAppServer(environment, database: "postgres") { connection in
            guard try Self.marker(of: plan.stagingDatabase, on: connection) == stagingMarker,
                  let stagingOID = try Self.oid(of: plan.stagingDatabase, on: connection) else {
                throw JobFailure(description: "the staging database \(plan.stagingDatabase) is gone or was replaced; the target is unchanged")
            }
            switch try Self.marker(of: plan.previousDatabase, on: connection) {
            case nil: return (stagingOID, false)
            case previousMarker?: return (stagingOID, true)
            case _?:
                throw BackupError.failedPrecondition("database \(plan.previousDatabase) exists and is not the previous copy of "
                    + "\(plan.targetDatabase) (another environment's database, or one made by hand); rename it to restore here. "
                    + "The target is unchanged")
            }
        }
    }

    /// Renames the previous copy aside, the target to the previous copy and
    /// the staging database to the target, in one transaction. The outcome,
    /// with the failure when it did not commit: a commit whose answer was
    /// lost counts as committed when the target's name has the staging oid.
    private func swapDatabases(_ environment: Environment, _ plan: RestorePlan, stagingOID: Int64,
                               previousExists: Bool) async -> (outcome: RestoreForwardPath.DatabaseSwapOutcome, failure: (any Error)?) {
        let previousMarker = Self.previousMarker(of: plan.targetDatabase)
        do {
            try await onAppServer(environment, database: "postgres") { [databases] connection in
                try databases.refuseCatalog(on: connection, named: plan.supersededDatabase)
                let renames = (previousExists ? [(plan.previousDatabase, plan.supersededDatabase)] : [])
                    + [(plan.targetDatabase, plan.previousDatabase), (plan.stagingDatabase, plan.targetDatabase)]
                // The environment is stopped: whatever is still connected to these databases must let go.
                try databases.takingOver([plan.targetDatabase, plan.stagingDatabase] + (previousExists ? [plan.previousDatabase] : []),
                                         on: connection) {
                    try connection.transaction {
                        try connection.query("COMMENT ON DATABASE \(ConnectionString.quoted(plan.targetDatabase)) IS \(Self.literal(previousMarker))")
                        try connection.query("COMMENT ON DATABASE \(ConnectionString.quoted(plan.stagingDatabase)) IS NULL")
                        for (from, to) in renames {
                            try connection.query("ALTER DATABASE \(ConnectionString.quoted(from)) RENAME TO \(ConnectionString.quoted(to))")
                        }
                    }
                }
            }
            return (.committed, nil)
        } catch {
            // The commit may have happened even though its answer was lost: the target's name tells.
            // A target name that is gone (the tenant renamed it away) is seen: the swap did not put the staging copy there.
            let inPlace: Int64?
            do {
                inPlace = try await onAppServer(environment, database: "postgres") { try Self.oid(of: plan.targetDatabase, on: $0) }
            } catch _ {
                return (.unseen, error)  // the swap's own failure: whether it committed is unknown
            }
            guard inPlace == stagingOID else {
                if error is BackupError { return (.notCommitted, error) }
                return (.notCommitted, JobFailure(description: "the database swap failed, the target is unchanged: \(describeJobError(error))"))
            }
            return (.committed, nil)
        }
    }

    /// Removes what the restore made and no longer needs: the staging
    /// copies; once the restore is in place (`restoreInPlace`), the
    /// superseded ones (the previous copies before this restore), never
    /// before; and, when asked (`--drop-previous-on-restore`), the previous
    /// ones. Only what carries this restore's markers goes: a database or
    /// folder there that is someone else's is left and logged. Nothing is
    /// removed while the file store holds this restore's files but the
    /// restore is not in place (recovery's to decide). What cannot be
    /// removed now (the server is down, a session holds it) is logged, stays
    /// recorded in the catalog and is retried by the runner's sweep until it
    /// is gone. Never touches the target. Returns whether nothing is left to do.
    @discardableResult
    func removeLeftovers(_ jobID: String, _ environment: Environment, _ plan: RestorePlan, restoreInPlace: Bool,
                         droppingPrevious: Bool = false) async -> Bool {
        if !restoreInPlace, plan.step.foldersMayBeSwapped, !plan.fileStore.isEmpty, Self.folders(plan, jobID: jobID).restoredFilesInStore {
            logger.warning("a restore's files are in its store but its database is not: its staging copies are kept for recovery",
                           metadata: ["job": "\(jobID)"])
            return false
        }
        let previousMarker = Self.previousMarker(of: plan.targetDatabase)
        var databasesToDrop = [(plan.stagingDatabase, Self.stagingMarker(of: plan.targetDatabase, jobID: jobID))]
        var folders = [(plan.stagingFolder, Self.folders(plan, jobID: jobID).jobMarker)]
        if restoreInPlace {
            databasesToDrop.append((plan.supersededDatabase, previousMarker))
            folders.append((plan.supersededFolder, RestoreFolders.previousMarker))
        }
        if restoreInPlace && droppingPrevious {
            databasesToDrop.append((plan.previousDatabase, previousMarker))
            folders.append((plan.previousFolder, RestoreFolders.previousMarker))
        }
        do {
            var outcomes: [(name: String, outcome: RestoreFolders.Removal)] = []
            for (folder, marker) in folders where !folder.isEmpty {
                outcomes.append((folder, try await removeFolder(folder, carrying: marker)))
            }
            outcomes += try await onAppServer(environment, database: "postgres") { [databasesToDrop] connection in
                try databasesToDrop.filter { !$0.0.isEmpty }.map { (name: $0.0, outcome: try dropDatabase($0.0, carrying: $0.1, on: connection)) }
            }
            let dropped = outcomes.filter { $0.outcome == .removed }.map(\.name)
            let foreign = outcomes.filter { $0.outcome == .notOurs }.map(\.name)
            if !foreign.isEmpty {
                logger.warning("left what a restore's names point at that it did not make", metadata: [
                    "job": "\(jobID)", "left": "\(foreign)"])
            }
            if !dropped.isEmpty {
                logger.info("removed a restore's copies", metadata: ["job": "\(jobID)", "removed": "\(dropped)"])
            }
            try await catalog.clearRestoreLeftovers(jobID: jobID)
            return true
        } catch {
            logger.warning("cannot remove what a restore left; the sweep tries again", metadata: [
                "job": "\(jobID)", "databases": "\(databasesToDrop.map(\.0).filter { !$0.isEmpty })",
                "folders": "\(folders.map(\.0).filter { !$0.isEmpty })", "error": "\(describeJobError(error))",
            ])
            return false
        }
    }

    /// Removes a folder that carries `marker` (`RestoreFolders.remove`). A
    /// file store can hold many files: removing it blocks, so it runs on the thread pool.
    private func removeFolder(_ folder: String, carrying marker: String) async throws -> RestoreFolders.Removal {
        try await threadPool.runIfActive {
            do {
                return try RestoreFolders.remove(folder, carrying: marker)
            } catch {
                throw JobFailure(description: "cannot remove \(folder): \(error)")
            }
        }
    }

    /// Drops a database on the environment's server if it carries `marker`
    /// (its comment), once nobody is on it (`takingOver`); never backupd's
    /// catalog, never a database this restore did not make.
    private func dropDatabase(_ database: String, carrying marker: String, on connection: PostgresConnection) throws -> RestoreFolders.Removal {
        try databases.refuseCatalog(on: connection, named: database)
        switch try Self.marker(of: database, on: connection) {
        case nil: return .absent
        case marker?: break
        case _?: return .notOurs
        }
        try databases.takingOver([database], on: connection) {
            try connection.query("DROP DATABASE IF EXISTS \(ConnectionString.quoted(database))")
        }
        return .removed
    }

    /// A database's comment, "" without one; nil when there is no such database.
    private static func marker(of database: String, on connection: PostgresConnection) throws -> String? {
        try connection.query("SELECT coalesce(shobj_description(oid, 'pg_database'), '') AS comment FROM pg_database WHERE datname = $1",
                             database).first?.string("comment")
    }

    private static func oid(of database: String, on connection: PostgresConnection) throws -> Int64? {
        try connection.query("SELECT oid::bigint AS oid FROM pg_database WHERE datname = $1", database).first.map { $0.int64("oid") }
    }

    /// The comment a restore's staging database carries until it is swapped in.
    static func stagingMarker(of target: String, jobID: String) -> String {
        "backupd: staging copy of \(target) for restore \(jobID)"
    }

    /// The comment the database a restore moved aside carries: the previous copy of `target`.
    static func previousMarker(of target: String) -> String {
        "backupd: previous copy of \(target)"
    }

    /// An SQL string literal, read the same whatever `standard_conforming_strings` the role set.
    private static func literal(_ text: String) -> String {
        "E'" + text.replacing("\\", with: "\\\\").replacing("'", with: "''") + "'"
    }

    /// The folders of a restore's plan.
    static func folders(_ plan: RestorePlan, jobID: String) -> RestoreFolders {
        RestoreFolders(fileStore: plan.fileStore, staging: plan.stagingFolder, previous: plan.previousFolder,
                       superseded: plan.supersededFolder, jobID: jobID)
    }

    /// Where a restore job keeps its copy of the dump while it runs.
    private func scratchDump(_ jobID: String) -> String {
        "\(scratchDirectory)/restore-\(jobID).backup"
    }

    /// Takes over a restore whose process died, as `RestoreRecovery`
    /// decides from its last recorded step and what is there now: complete
    /// it, or undo any folder swap and remove the staging copies, leaving the
    /// target as it was.
    func recover(_ claimed: ClaimedJob, owner: String) async throws {
        FileSystem.remove(scratchDump(claimed.job.id))
        let work = try await catalog.restoreWork(jobID: claimed.job.id)
        guard let plan = work.plan else {
            throw JobFailure(description: "backupd stopped before the restore began; the target is unchanged")
        }
        let restoredDatabaseInPlace: Bool
        do {
            restoredDatabaseInPlace = try await onAppServer(claimed.environment, database: "postgres") { connection in
                guard let stagingOID = plan.stagingOID else { return false }  // no staging database was ever made
                return try Self.oid(of: plan.targetDatabase, on: connection) == stagingOID
            }
        } catch {
            // Nothing is decided blind: the folders may be swapped and the databases not, or both.
            throw RestoreRecoveryDeferred(reason: "its database server cannot be asked: \(describeJobError(error))")
        }
        let ending = RestoreRecovery.decide(after: plan.step, restoredDatabaseInPlace: restoredDatabaseInPlace)
        try await end(ending, claimed, plan, owner: owner, finished: "completed after backupd restarted")
        if ending != .complete {
            throw JobFailure(description: "backupd stopped while restoring (after step \(plan.step.rawValue)); "
                             + "the staging copies were removed and the target is unchanged")
        }
    }

    /// Runs `body` on a connection to the environment's database server:
    /// its own database (`nil`) or another one there.
    @discardableResult
    private func onAppServer<T: Sendable>(_ environment: Environment, database: String?,
                                          _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await databases.session(environment, database: database, threadPool: threadPool).runCancellable(body)
    }

    /// `base` and `suffix` within PostgreSQL's 63-byte identifiers, cut at a character boundary.
    private func databaseName(_ base: String, suffix: String) -> String {
        var base = base
        while base.utf8.count + suffix.utf8.count > 63 { base.removeLast() }
        return base + suffix
    }


    /// A storage error as the tenant reads it in the job's failure; the log keeps its detail (paths).
    private func told(_ error: any ReportableError) -> String {
        logger.error("restore cannot read the blob store", metadata: ["error": "\(error.logDetail)"])
        return error.publicError.description
    }
}

/// A restore whose outcome cannot be seen now (its database server is out
/// of reach): it stays RUNNING, its environment busy, and recovery looks
/// again once the lease it is given runs out. Nothing is decided blind.
struct RestoreRecoveryDeferred: Error, CustomStringConvertible {
    let reason: String
    var description: String { "the restore's recovery waits: \(reason)" }
}
