import BackupClient
import BackupRules
import BackupStorage
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Synchronization
import Testing

/// The blob store's disk fills up while an upload is received and while an
/// archive is prepared: each is refused RESOURCE_EXHAUSTED naming the full
/// disk, keeps or removes what it should, and goes on once there is room.
/// The disk is a small tmpfs of the test's own.
/// A tmpfs of `size` (mount's spelling: 64m, 3m, 64k) mounted for `body`,
/// unmounted after: a small disk of the test's own (mounting needs root, as in CI).
func withSmallDisk<T: Sendable>(size: String, _ body: (String) async throws -> T) async throws -> T {
    let disk = try ScratchDirectory("small-disk")
    defer { disk.remove() }
    let mounted = try await runCommand("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", disk.path])
    try #require(mounted.status == 0, "cannot mount a small tmpfs: \(mounted.standardError)")
    defer { _ = try? runCommand("/bin/umount", ["-l", disk.path]) }
    return try await body(disk.path)
}

@Suite(.serialized) struct FullDiskTransferTests {
    /// Fills the disk at `folder` but for `leave` bytes (or all of it, when
    /// something else writes meanwhile); returns the filler's path.
    private func fill(_ folder: String, leaving leave: Int) throws -> String {
        let path = folder + "/filler"
        var info = statvfs()
        #expect(statvfs(folder, &info) == 0)
        var left = max(0, Int(info.f_bavail) * Int(info.f_frsize) - leave)
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw TestSupportError("cannot create \(path)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        while left > 0 {
            let count = min(left, 1 << 20)
            do { try handle.write(contentsOf: Data(count: count)) } catch { break }  // the disk is full
            left -= count
        }
        return path
    }

    @Test func anUploadOnAFullDiskIsRefusedKeepsWhatItHadAndResumes() async throws {
        try await withSmallDisk(size: "64m") { disk in
            try await withTestApp { app in
                try await withInProcessServer(configure: {
                    $0.uploads.directory = disk + "/uploads"
                    $0.uploads.reservedDiskBytes = 1 << 20
                }) { server in
                    try await server.register(app)
                    let content = (0..<8_000_000).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 9) }
                    try await server.withClient { client in
                        let upload = try await startUpload(client, content)
                        try await sendChunks(client, upload, content, from: 0, to: 2_000_000, chunk: 1 << 20)
                        // Something else takes the disk.
                        let filler = try fill(disk, leaving: 512 << 10)
                        let refused = await expectStatus(.resourceExhausted) {
                            try await sendChunks(client, upload, content, from: 2_000_000, to: content.count, chunk: 1 << 20)
                        }
                        #expect(refused?.message.contains("disk is full") == true, "\(String(describing: refused))")
                        let kept = try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id })
                        #expect(kept.state == .receiving && kept.bytesReceived >= 2_000_000 && kept.bytesReceived < UInt64(content.count))
                        try FileManager.default.removeItem(atPath: filler)
                        try await sendChunks(client, upload, content, from: Int(kept.bytesReceived), to: content.count, chunk: 1 << 20)
                        let done = try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id })
                        #expect(done.bytesReceived == UInt64(content.count))
                    }
                }
            }
        }
    }

    @Test func anArchiveOnAFullDiskFailsLeavesNothingAndIsPreparedOnceThereIsRoom() async throws {
        try await withSmallDisk(size: "64m") { disk in
            try await withTestApp { app in
                try await withInProcessServer(configure: {
                    $0.downloads.cacheDirectory = disk + "/archives"
                    $0.downloads.reservedDiskBytes = 1 << 20
                }) { server in
                    let backup = try await finishedBackup(server, app)
                    let filler = try fill(disk, leaving: 2 << 20)
                    try await server.withClient { client in
                        let refused = await expectStatus(.resourceExhausted) {
                            _ = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                        }
                        #expect(refused?.message.contains("free") == true, "\(String(describing: refused))")
                        #expect(try FileManager.default.contentsOfDirectory(atPath: disk + "/archives").isEmpty)
                        try FileManager.default.removeItem(atPath: filler)
                        let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                        #expect(try await waitForJob(requested.jobID, on: client).status == .finished)
                        #expect(try await client.unary(Backups.getDownload, .with { $0.id = requested.id }).ready)
                    }
                }
            }
        }
    }

    /// The disk fills while an archive is being written (something else
    /// takes the room the check at the request saw): the preparation fails
    /// naming the full disk, its partial file is removed, and asked again
    /// once there is room, the archive is prepared.
    @Test func aDiskThatFillsWhileAnArchiveIsWrittenFailsItAndLeavesNothing() async throws {
        try await withSmallDisk(size: "64m") { disk in
            try await withTestApp { app in
                try addDocument(to: app, size: 40 << 20, content: .text)
                let store = Mutex<ReadGatedBlobStore?>(nil)
                try await withInProcessServer(blobStore: { local in
                    let gated = ReadGatedBlobStore(local)
                    store.withLock { $0 = gated }
                    return gated
                }, configure: {
                    $0.downloads.cacheDirectory = disk + "/archives"
                    $0.downloads.reservedDiskBytes = 1 << 20
                }) { server in
                    let backup = try await finishedBackup(server, app)
                    let gated = try #require(store.withLock { $0 })
                    // The archive stops after the document's first chunk, its partial file begun.
                    let document = try await TestPostgres.query(server.catalogDatabase, """
                        SELECT sha256 FROM snapshot_files WHERE snapshot_id = $1 ORDER BY size DESC LIMIT 1
                        """, backup.id)[0].string("sha256")
                    gated.hold(try #require(ContentHash(hex: document)))
                    try await server.withClient { client in
                        let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                        try await eventually(within: .seconds(60)) { gated.isHolding }
                        #expect(try FileManager.default.contentsOfDirectory(atPath: disk + "/archives").contains { $0.hasSuffix(".partial") })
                        let filler = try fill(disk, leaving: 0)
                        gated.release()
                        let failed = try await waitForJob(requested.jobID, on: client)
                        #expect(failed.status == .failed && failed.error.contains("space"), "\(failed.status) \(failed.error)")
                        #expect(try FileManager.default.contentsOfDirectory(atPath: disk + "/archives").isEmpty)
                        try FileManager.default.removeItem(atPath: filler)
                        let again = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                        #expect(try await waitForJob(again.jobID, on: client).status == .finished)
                        #expect(try await client.unary(Backups.getDownload, .with { $0.id = again.id }).ready)
                    }
                }
            }
        }
    }
}
