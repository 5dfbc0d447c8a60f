import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Adds a table of about 16 MiB to an app, so its dump has many chunks.
func addBulkTable(_ app: TestApp) throws {
    try TestPostgres.query(app.database, """
        CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || repeat(md5((g * 7)::text), 3) AS payload
        FROM generate_series(1, 100000) g
        """)
}

/// The blobs of a backup's dump chunks, in order.
func dumpChunkBlobs(_ server: some BackupTestServer, _ backup: Backup) throws -> [String] {
    try TestPostgres.query(server.catalogDatabase, "SELECT blob_sha256 FROM dump_chunks WHERE snapshot_id = $1 ORDER BY position", backup.id)
        .map { $0.string("blob_sha256") }
}

/// Backups store their dumps as content-defined, compressed chunks shared
/// between backups; dumps stored whole by earlier versions still serve.
@Suite(.serialized) struct ChunkedDumpBackupTests {
    @Test func aNightsBackupOfALittleChangedDatabaseSharesAlmostEveryChunk() async throws {
        try await withTestApp { app in
            try addBulkTable(app)
            try await withInProcessServer { server in
                let first = try await finishedBackup(server, app)
                let firstChunks = try dumpChunkBlobs(server, first)
                #expect(firstChunks.count >= 6, "\(firstChunks.count) chunks")
                // Compressed: the dump of text-heavy rows takes far less room than pg_dump wrote.
                let stored = try storedDump(server, first.id)
                #expect(stored.blobs.reduce(0) { $0 + $1.size } < first.databaseBytes / 2)
                let second = try await server.withClient { client in
                    let created = try await createBackup(client)
                    _ = try await waitForJob(created.job.id, on: client)
                    return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
                }
                let secondChunks = try dumpChunkBlobs(server, second)
                #expect(Set(secondChunks).subtracting(firstChunks).count <= 2, "\(secondChunks.count) chunks")
                // One percent of the rows change: most chunks are still shared.
                try await TestPostgres.query(app.database, "UPDATE bulk SET payload = upper(payload) WHERE id % 100 = 0 AND id < 10000")
                let third = try await server.withClient { client in
                    let created = try await createBackup(client)
                    _ = try await waitForJob(created.job.id, on: client)
                    return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
                }
                let thirdChunks = try dumpChunkBlobs(server, third)
                #expect(Set(thirdChunks).subtracting(secondChunks).count <= 4, "\(Set(thirdChunks).subtracting(secondChunks).count) new")
                // Each reassembles to exactly what pg_dump wrote.
                let folder = try ScratchDirectory("dumps")
                defer { folder.remove() }
                for backup in [first, second, third] {
                    let path = try await reassembledDump(server, backup.id, in: folder.path)
                    #expect(ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: path))).hex == backup.dumpSHA256)
                }
            }
        }
    }

    @Test func aFlippedByteInOneChunkFailsRestoreAndVerifyByName() async throws {
        try await withTestApp { app in
            try addBulkTable(app)
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                let chunks = try dumpChunkBlobs(server, backup)
                try await server.damage(ContentHash(hex: chunks[1])!) { $0[$0.count / 3] ^= 0x01 }
                try await server.withClient { client in
                    let restored = try await restore(client, backup)
                    #expect(restored.status == .failed)
                    #expect(restored.error.contains("chunk 2 of \(chunks.count) of the database dump: blob \(chunks[1]) is corrupt"),
                            "\(restored.error)")
                    let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                    #expect(try await waitForJob(verifying.id, on: client).status == .failed)
                    let verified = try await client.unary(Backups.getBackup, .with { $0.id = backup.id }).verification
                    #expect(verified?.problemCount == 1)
                    #expect(verified?.problems.first?.name == "db/db.backup (chunk 2 of \(chunks.count))")
                    #expect(verified?.problems.first?.sha256 == chunks[1])
                }
            }
        }
    }

    /// Helper finding: a blob the store cannot read (a folder in its place)
    /// failed the restore, and a download's preparation, with the blob's
    /// path on the server in the tenant's job error. They say the system's
    /// reason; the path stays in the log.
    @Test(.enabled(if: BlobStoreKind.configured == .localFolder, "a folder in a blob's place is the local folder's own failure"))
    func anUnreadableChunkFailsRestoreAndDownloadWithoutTheServersPaths() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                let chunks = try dumpChunkBlobs(server, backup)
                let path = try LocalBlobStore(root: server.blobDirectory).path(for: ContentHash(hex: chunks[0])!)
                try FileManager.default.removeItem(atPath: path)
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
                try await server.withClient { client in
                    let restored = try await restore(client, backup)
                    #expect(restored.status == .failed)
                    #expect(restored.error.contains("chunk 1 of \(chunks.count) of the database dump") && restored.error.contains("Is a directory"),
                            "\(restored.error)")
                    #expect(!restored.error.contains(server.blobDirectory), "\(restored.error)")
                    let asked = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id; $0.databaseOnly = true })
                    let archive = try await waitForJob(asked.jobID, on: client)
                    #expect(archive.status == .failed && !archive.error.contains(server.blobDirectory), "\(archive.error)")
                }
            }
        }
    }

    @Test func aBackupWhoseDumpIsOneBlobStillRestoresDownloadsAndVerifies() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let atBackup = try EnvironmentState(app)
                let backup = try await finishedBackup(server, app)
                // Made as backupd stored dumps before they were chunked: the whole dump one blob, named by dump_sha256.
                let folder = try ScratchDirectory("whole-dump")
                defer { folder.remove() }
                let (store, dump) = (try server.storage.open(), try await reassembledDump(server, backup.id, in: folder.path))
                let whole = try await onThread { try store.adopt(dump) }
                #expect(whole.hash.hex == backup.dumpSHA256)
                try await TestPostgres.query(server.catalogDatabase, "INSERT INTO blobs (sha256, size) VALUES ($1, $2)", whole.hash.hex, String(whole.size))
                try await TestPostgres.query(server.catalogDatabase, "DELETE FROM dump_chunks WHERE snapshot_id = $1", backup.id)
                #expect(try storedDump(server, backup.id) == .blob(StoredBlob(hash: whole.hash, size: whole.size)))
                try changeEverything(app)
                try await server.withClient { client in
                    let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                    #expect(try await waitForJob(verifying.id, on: client).status == .finished)
                    let download = try await readyDownload(client, backup, databaseOnly: true)
                    #expect(download.sha256 == backup.dumpSHA256 && download.sizeBytes == backup.databaseBytes)
                    let restored = try await restore(client, backup)
                    #expect(restored.status == .finished, "\(restored.error)")
                }
                #expect(try EnvironmentState(app).tables == atBackup.tables)
            }
        }
    }
}
