import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// An app that keeps working while it is backed up, the way the Mendix
/// runtime does: a writer stores a document's file and then inserts its row;
/// a deleter deletes rows and then their files. Both run on threads of their
/// own, several times a second, until stopped.
final class BusyApp: @unchecked Sendable {
    let app: TestApp
    private let stopped = Atomic(false)
    private let working = DispatchGroup()
    /// Every key the writer made, for checking a backup's copy against what was written.
    let writtenKeys = Atomic(Set<String>())
    private var threads: [Thread] = []

    init(_ app: TestApp) { self.app = app }

    /// What the writer puts in the file of `key`: derived from the key, so any copy can be checked byte for byte.
    static func content(of key: String) -> [UInt8] {
        Array(String(repeating: "\(key) is a live document\n", count: 40 + key.utf8.reduce(0) { ($0 + Int($1)) % 97 }).utf8)
    }

    func path(of key: String) -> String {
        "\(app.fileStore)/\(key.prefix(2))/\(key.dropFirst(2).prefix(2))/\(key)"
    }

    func start() {
        let writer = Thread { [self] in
            defer { working.leave() }
            var id = 100_000
            while !stopped.value {
                id += 1
                let key = UUID().uuidString.lowercased()
                try? FileManager.default.createDirectory(atPath: String(path(of: key).dropLast(key.count + 1)),
                                                         withIntermediateDirectories: true)
                _ = FileManager.default.createFile(atPath: path(of: key), contents: Data(Self.content(of: key)))
                _ = try? TestPostgres.query(app.database, """
                    INSERT INTO "system$filedocument" (id, "__uuid__", name, size, changeddate) VALUES ($1, $2, 'live', 0, now())
                    """, String(id), key)
                writtenKeys.update { $0.insert(key) }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        let deleter = Thread { [self] in
            defer { working.leave() }
            while !stopped.value {
                let keys = (try? TestPostgres.query(app.database, """
                    DELETE FROM "system$filedocument" WHERE id IN
                        (SELECT id FROM "system$filedocument" WHERE id > 100000 ORDER BY random() LIMIT 2)
                    RETURNING "__uuid__" AS key
                    """).map { $0.string("key") }) ?? []
                for key in keys { unlink(path(of: key)) }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        threads = [writer, deleter]
        threads.forEach { _ in working.enter() }
        threads.forEach { $0.start() }
    }

    func stop() {
        stopped.value = true
        working.wait()
    }
}

@Suite(.serialized) struct LiveBackupTests {
    /// Five backups in a row of an app that writes and deletes documents
    /// throughout: each finishes, each holds exactly the files its dump
    /// refers to, byte for byte, less those deleted with their rows while it
    /// ran, which it counts.
    @Test func backupsOfABusyAppFinishAndAreConsistent() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let busy = BusyApp(app)
                busy.start()
                defer { busy.stop() }
                // The app is busy once it has written some documents of its own.
                try await eventually(within: .seconds(30)) { busy.writtenKeys.value.count >= 10 }
                var deletedSeen: UInt64 = 0
                for round in 1...5 {
                    let backup = try await server.withClient { client in
                        let created = try await client.unary(Backups.createBackup, .with {
                            $0.namespace = TestServer.namespace; $0.environment = "shop-production"; $0.comment = "live \(round)"
                        })
                        let job = try await waitForJob(created.job.id, on: client)
                        #expect(job.status == .finished, "round \(round): \(job.error)")
                        return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
                    }
                    guard backup.status == .finished else { continue }
                    let (dumped, stored) = try await contents(of: backup, on: server)
                    // Every file the backup holds, its dump refers to, with the content its key was written with.
                    #expect(Set(stored.keys).isSubset(of: dumped), "round \(round)")
                    let written = busy.writtenKeys.value
                    for (key, hash) in stored {
                        let expected = written.contains(key)
                            ? BusyApp.content(of: key)
                            : Array(try Data(contentsOf: URL(fileURLWithPath: "\(TestPostgres.demoFiles)/\(key.prefix(2))/\(key.dropFirst(2).prefix(2))/\(key)")))
                        #expect(hash == ContentHash.of(expected).hex, "round \(round): \(key)")
                    }
                    // What the dump refers to but the backup lacks was deleted while it ran, and is counted as such.
                    let lacking = dumped.subtracting(stored.keys)
                    #expect(UInt64(lacking.count) == backup.filesDeletedDuringBackup, "round \(round)")
                    #expect(backup.fileCount == UInt64(stored.count))
                    if backup.filesDeletedDuringBackup > 0 {
                        #expect(backup.warning.contains("deleted with their rows while the backup ran"))
                    }
                    deletedSeen += backup.filesDeletedDuringBackup
                }
                busy.stop()
                print("live backups: 5 rounds, \(deletedSeen) file documents deleted during them")
            }
        }
    }

    /// A file gone when read whose row is deleted after the snapshot (while
    /// pg_dump still runs) is left out and counted; a file modified after the
    /// snapshot is stored and counted. Both are named in the warning and the
    /// activity log.
    @Test func filesDeletedWithTheirRowsOrChangedAfterTheSnapshotAreCountedAndNamed() async throws {
        try await withTestApp { app in
            // pg_dump says it has started (the snapshot is taken by then), then waits while its gate exists.
            let dump = try GatedTool("pg_dump")
            try await withInProcessServer(live: true, configure: { $0.jobs.tools.pgDump = dump.path }) { server in
                try await server.register(app)
                let keys = try referencedKeys(app)
                let (deleted, changed) = (keys[3], keys[7])
                unlink(documentPath(app, deleted))
                let future = Date().addingTimeInterval(3600)
                try FileManager.default.setAttributes([.modificationDate: future], ofItemAtPath: documentPath(app, changed))
                let backup = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with {
                        $0.namespace = TestServer.namespace; $0.environment = "shop-production"
                    })
                    // The snapshot is taken before pg_dump starts; its row goes while pg_dump is held.
                    try await eventually(within: .seconds(60)) { dump.hasStarted }
                    try await TestPostgres.query(app.database, "DELETE FROM \"shop$invoice\" WHERE document_id IN (SELECT id FROM \"system$filedocument\" WHERE \"__uuid__\" = $1)", deleted)
                    try await TestPostgres.query(app.database, "DELETE FROM \"system$filedocument\" WHERE \"__uuid__\" = $1", deleted)
                    dump.release()
                    let job = try await waitForJob(created.job.id, on: client)
                    #expect(job.status == .finished, "\(job.error)")
                    return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
                }
                #expect(backup.filesDeletedDuringBackup == 1 && backup.filesChangedDuringBackup == 1)
                #expect(backup.fileCount == UInt64(keys.count - 1))
                #expect(backup.warning.contains("1 file documents were deleted with their rows while the backup ran and are not in it: \(deleted)"))
                #expect(backup.warning.contains("1 file documents were modified after the snapshot and are stored as they were read: \(changed)"))
                let (dumped, stored) = try await contents(of: backup, on: server)
                #expect(dumped.subtracting(stored.keys) == [deleted])
                let shown = try await server.backupctl(["show", backup.id])
                #expect(shown.standardOutput.contains("warning"))
                let activity = try await server.backupctl(["activity", "--env", "\(TestServer.namespace)/shop-production", "--json"])
                #expect(activity.standardOutput.contains("warning: 1 file documents were deleted"))
            }
        }
    }

    /// A file whose row is still there but which is gone from the store is
    /// not a deletion: the backup fails naming it.
    @Test func aMissingFileWhoseRowRemainsFailsTheBackupNamingIt() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let key = try referencedKeys(app)[5]
                try FileManager.default.removeItem(atPath: documentPath(app, key))
                let job = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with {
                        $0.namespace = TestServer.namespace; $0.environment = "shop-production"
                    })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(job.status == .failed)
                #expect(job.error.contains("file document \(key) is referenced by the database but missing from the file store"))
            }
        }
    }
}

func documentPath(_ app: TestApp, _ key: String) -> String {
    "\(app.fileStore)/\(key.prefix(2))/\(key.dropFirst(2).prefix(2))/\(key)"
}

/// The file document keys the backup's dump lists as having contents, and
/// the keys and blob hashes the backup holds, read from its catalog and blob store.
func contents(of backup: Backup, on server: some BackupTestServer) async throws -> (dumped: Set<String>, stored: [String: String]) {
    let stored = Dictionary(uniqueKeysWithValues: try await TestPostgres.query(server.catalogDatabase, """
        SELECT storage_key, sha256 FROM snapshot_files WHERE snapshot_id = $1
        """, backup.id).map { ($0.string("storage_key"), $0.string("sha256")) })
    let folder = try ScratchDirectory("dump")
    defer { folder.remove() }
    let dumpPath = try await reassembledDump(server, backup.id, in: folder.path)
    let data = try await runCommand("/usr/bin/pg_restore", ["--data-only", "--table=system$filedocument", "--file=-", dumpPath])
    guard data.status == 0 else { throw TestSupportError("pg_restore: \(data.standardError)") }
    var dumped = Set<String>()
    var inCopy = false
    for line in data.standardOutput.split(separator: "\n", omittingEmptySubsequences: false) {
        if line.hasPrefix("COPY ") { inCopy = true; continue }
        if line == "\\." { inCopy = false; continue }
        guard inCopy else { continue }
        // id, __uuid__, name, size, hascontents, deleteafterdownload, changeddate
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
        if fields.count >= 6 && fields[4] == "t" && fields[5] == "f" { dumped.insert(String(fields[1])) }
    }
    return (dumped, stored)
}
