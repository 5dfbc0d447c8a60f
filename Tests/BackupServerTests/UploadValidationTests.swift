import BackupClient
import BackupRules
import BackupStorage
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Sends all of `content` as a new upload into shop-production, finishes it and waits for its validation; returns the upload as it ended.
func uploadAndValidate(_ client: BackupClient, _ content: [UInt8], comment: String = "from elsewhere") async throws -> (Upload, Job) {
    let upload = try await startUpload(client, content)
    try await sendChunks(client, upload, content, from: 0, to: content.count, chunk: 1 << 20)
    let finishing = try await client.unary(Backups.finishUpload, .with { $0.uploadID = upload.id })
    #expect(finishing.state == .validating && !finishing.jobID.isEmpty)
    let job = try await waitForJob(finishing.jobID, on: client)
    return (try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }), job)
}

/// Uploads validated into backups: archives this server wrote, archives made
/// by hand, and every way an archive can be refused.
@Suite(.serialized) struct UploadValidationTests {
    @Test func anArchiveMadeByHandTheWayTheFormatSaysBecomesABackup() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                // The recipe of the public format: .metadata, pg_dump -Fc -O -x, tree/xx/yy/KEY, tar czf.
                let scratch = try ScratchDirectory("by-hand")
                defer { scratch.remove() }
                let folder = scratch.path + "/snapshot"
                try FileManager.default.createDirectory(atPath: folder + "/db", withIntermediateDirectories: true)
                try #"{"modelVersion": "2.5.1", "comment": "made by hand", "databaseSize": "18446744073709551615"}"#.write(toFile: folder + "/.metadata", atomically: true, encoding: .utf8)
                let dumped = try await runCommand("/usr/bin/pg_dump", ["-Fc", "-O", "-x", "-h", "127.0.0.1", "-p", TestPostgres.port, "-U", "postgres",
                                                                 "-f", folder + "/db/db.backup", app.database])
                #expect(dumped.status == 0, "\(dumped.standardError)")
                let keys = try referencedKeys(app)
                for key in keys {
                    let relative = try FileStoreLayout.relativePath(forKey: key)
                    try FileManager.default.createDirectory(atPath: folder + "/tree/" + relative.dropLast(key.count + 1),
                                                            withIntermediateDirectories: true)
                    try FileManager.default.copyItem(atPath: app.fileStore + "/" + relative, toPath: folder + "/tree/" + relative)
                }
                let archive = scratch.path + "/by-hand.tar.gz"
                #expect(try await runCommand("/bin/tar", ["czf", archive, "-C", folder, "."]).status == 0)
                let content = Array(try Data(contentsOf: URL(fileURLWithPath: archive)))

                try await server.withClient { client in
                    let (upload, job) = try await uploadAndValidate(client, content)
                    #expect(job.status == .finished && job.kind == .uploadValidation, "\(job.error)")
                    #expect(upload.state == .finished && !upload.backupID.isEmpty && job.backupID == upload.backupID)
                    let backup = try await client.unary(Backups.getBackup, .with { $0.id = upload.backupID })
                    #expect(backup.kind == .uploaded && backup.status == .finished && backup.environment == "shop-production")
                    #expect(backup.packageVersion == "2.5.1" && backup.comment == "from elsewhere" && !backup.postgresVersion.isEmpty)
                    #expect(backup.fileCount == UInt64(keys.count) && backup.expiresUnixMS > backup.createdUnixMS)
                    #expect(backup.dumpSHA256 == ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: folder + "/db/db.backup"))).hex)
                    // Each document is cataloged under the hash of the app's file.
                    let files = try await TestPostgres.query(server.catalogDatabase, "SELECT storage_key, sha256 FROM snapshot_files WHERE snapshot_id = $1",
                                                       backup.id)
                    #expect(files.count == keys.count)
                    for file in files {
                        let original = try Data(contentsOf: URL(fileURLWithPath: app.fileStore + "/"
                                                                + (try FileStoreLayout.relativePath(forKey: file.string("storage_key")))))
                        #expect(ContentHash.of(original).hex == file.string("sha256"))
                    }
                    // Asked again, FinishUpload answers the upload as it stands.
                    let again = try await client.unary(Backups.finishUpload, .with { $0.uploadID = upload.id })
                    #expect(again.state == .finished && again.backupID == upload.backupID)
                    let activity = try await client.unary(Backups.listActivity, .with { $0.namespace = TestServer.namespace }).activity
                    #expect(activity.contains { $0.action == "upload" && $0.outcome == "RECEIVED" && $0.actor == "test-admin" })
                    #expect(activity.contains { $0.action == "upload-validation" && $0.outcome == "FINISHED" && $0.backupID == backup.id })

                    // Only a whole upload is finished.
                    let partial = try await startUpload(client, content)
                    try await sendChunks(client, partial, content, from: 0, to: 1000)
                    let early = await expectStatus(.failedPrecondition) {
                        _ = try await client.unary(Backups.finishUpload, .with { $0.uploadID = partial.id })
                    }
                    #expect(early?.message == "upload \(partial.id) has received 1000 of its \(content.count) bytes; send the rest, "
                            + "from offset 1000, before finishing it")
                }
                // What the partial upload received is a segment in the store; no call holds a spool file.
                #expect(try FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/uploads").isEmpty)
            }
        }
    }

    static let key = "0d3e301f-5551-46f8-ad44-8de2be084c95"
    static let document = "('tree/0d/3e/\(key)', 'file', 'an invoice')"
    static let metadata = #"('.metadata', 'file', '{"modelVersion": "1.0.0"}')"#

    @Test func everyBrokenArchiveIsRefusedNamingItsProblemAndLeavesNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: {
                $0.uploads.archiveLimits.ratioGrace = 1 << 20
                $0.jobs.garbageCollectionInterval = .seconds(1)
            }) { server in
                try await server.register(app)
                let scratch = try ScratchDirectory("refused")
                defer { scratch.remove() }
                let dumpFile = scratch.path + "/db.backup"
                #expect(try await runCommand("/usr/bin/pg_dump", ["-Fc", "-h", "127.0.0.1", "-p", TestPostgres.port, "-U", "postgres", "-f", dumpFile,
                                                            "-t", "\"shop$customer\"", app.database]).status == 0)
                let dump = "('db/db.backup', 'file', open('\(dumpFile)', 'rb').read())"
                let good = try await craftArchive(in: scratch, "[\(Self.metadata), \(dump), \(Self.document)]")
                let goodBytes = try Data(contentsOf: URL(fileURLWithPath: good))
                let plainTar = try await craftArchive(in: scratch, "[\(Self.metadata), \(dump), \(Self.document)]", mode: "w")
                let cutTar = scratch.path + "/cut.tar"
                try Data(contentsOf: URL(fileURLWithPath: plainTar)).prefix(1500).write(to: URL(fileURLWithPath: cutTar))
                #expect(try await runCommand("/bin/gzip", ["-kf", cutTar]).status == 0)
                let mismatch = #"('.metadata', 'file', '{"sha256:tree/0d/3e/\#(Self.key)": "\#(String(repeating: "0", count: 64))"}')"#

                let cases: [(String, [UInt8], String)] = [
                    ("not gzip", try bytes(plainTar), "the archive is not gzip-compressed"),
                    ("truncated gzip", Array(goodBytes.prefix(goodBytes.count * 2 / 3)), "the archive is truncated or corrupt"),
                    ("truncated tar", try bytes(cutTar + ".gz"), "the archive is truncated or corrupt"),
                    ("missing .metadata", try await crafted(scratch, "[\(dump), \(Self.document)]"), "the archive has no .metadata"),
                    (".metadata not JSON", try await crafted(scratch, "[('.metadata', 'file', '{oops'), \(dump)]"), ".metadata is not a JSON object"),
                    ("missing dump", try await crafted(scratch, "[\(Self.metadata), \(Self.document)]"), "the archive has no db/db.backup"),
                    ("not a dump", try await crafted(scratch, "[\(Self.metadata), ('db/db.backup', 'file', 'PGDMP but not really')]"),
                     "the archive's db/db.backup is not a dump pg_restore can read"),
                    ("climbing name", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/../../x', 'file', 'x')]"),
                     "member \"tree/../../x\" climbs out of the archive with .."),
                    ("absolute name", try await crafted(scratch, "[\(Self.metadata), \(dump), ('/etc/cron.d/x', 'file', 'x')]"),
                     "member \"/etc/cron.d/x\" has an absolute name"),
                    ("symbolic link", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/0d/3e/\(Self.key)', 'symlink', '/etc/shadow')]"),
                     "is a symbolic link"),
                    ("hard link", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/0d/3e/\(Self.key)', 'hardlink', 'db/db.backup')]"),
                     "is a hard link"),
                    ("device node", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/0d/3e/\(Self.key)', 'chardev', '')]"),
                     "is a character device"),
                    ("duplicate member", try await crafted(scratch, "[\(Self.metadata), \(dump), \(Self.document), \(Self.document)]"),
                     "member \"tree/0d/3e/\(Self.key)\" appears twice"),
                    ("wrong folders", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/ab/cd/\(Self.key)', 'file', 'x')]"),
                     "is in the wrong folders"),
                    ("gzip bomb", try await crafted(scratch, "[\(Self.metadata), \(dump), ('tree/0d/3e/\(Self.key)', 'file', bytes(64 << 20))]"),
                     "refused as a decompression bomb"),
                    ("checksum mismatch", try await crafted(scratch, "[\(mismatch), \(dump), \(Self.document)]"),
                     "member tree/0d/3e/\(Self.key) has SHA-256 \(ContentHash.of(Array("an invoice".utf8)).hex), but .metadata says \"0000"),
                    ("modelVersion with control characters",
                     try await crafted(scratch, #"[('.metadata', 'file', '{"modelVersion": "1.0\\u001b[2J"}'), "# + dump + "]"),
                     ".metadata modelVersion must be at most 256 bytes without control or format characters"),
                ]
                try await server.withClient { client in
                    for (what, content, reason) in cases {
                        let (upload, job) = try await uploadAndValidate(client, content)
                        #expect(job.status == .failed && job.error.contains(reason), "\(what): \(job.error)")
                        #expect(upload.state == .failed && upload.error == job.error && upload.backupID.isEmpty, "\(what)")
                    }
                    // The good one, sent the same way, is taken: the refusals were the archives' own.
                    let (upload, job) = try await uploadAndValidate(client, Array(goodBytes))
                    #expect(job.status == .finished && upload.state == .finished, "\(job.error)")
                    // Stating the hash of content the store holds, with other content, is refused as stating any other hash
                    // is: the refusal says nothing of what the store holds. A stated hash asks nothing of the store or the
                    // catalog (helper finding: its row was marked used first, and the time that took told whether any
                    // namespace held the content): the held blob's row is as the good upload left it.
                    let invoice = ContentHash.of(Array("an invoice".utf8)).hex
                    let usedAt = "SELECT used_at::text AS at FROM blobs WHERE sha256 = $1"
                    let usedBefore = try await TestPostgres.query(server.catalogDatabase, usedAt, invoice)[0].string("at")
                    for (stated, held) in [(invoice, true), (String(repeating: "1", count: 64), false)] {
                        let claim = #"('.metadata', 'file', '{"sha256:tree/0d/3e/\#(Self.key)": "\#(stated)"}')"#
                        let forged = try await crafted(scratch, "[\(claim), \(dump), ('tree/0d/3e/\(Self.key)', 'file', 'a guess')]")
                        let (_, refused) = try await uploadAndValidate(client, forged)
                        #expect(refused.error == "the archive is not a valid snapshot: member tree/0d/3e/\(Self.key) has SHA-256 "
                                + "\(ContentHash.of(Array("a guess".utf8)).hex), but .metadata says \"\(stated)\"", "held: \(held)")
                    }
                    #expect(try await TestPostgres.query(server.catalogDatabase, usedAt, invoice)[0].string("at") == usedBefore)
                    _ = try await client.unary(Backups.deleteBackup, .with { $0.id = upload.backupID })
                }
                // Nothing was cataloged, and nothing stays: spool, scratch and blob store end empty.
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM snapshots")[0].int64("n") == 0)
                try await eventually(within: .seconds(30)) {
                    let stored = try await server.storedBlobs()
                    let rows = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM blobs")[0].int64("n")
                    return try FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/uploads").isEmpty
                        && FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/tmp").isEmpty
                        && stored.isEmpty && rows == 0
                }
            }
        }
    }

    private func bytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    private func crafted(_ scratch: ScratchDirectory, _ members: String) async throws -> [UInt8] {
        try bytes(try await craftArchive(in: scratch, members))
    }

    @Test func aDownloadedArchiveUploadedOverACutConnectionRestoresInAnotherEnvironment() async throws {
        try await withTestApp { production in
            try await withTestApp { acceptance in
                try await withTestServer { server in
                    try await TestPostgres.query(production.database, "UPDATE \"shop$customer\" SET name = 'Production ' || id")
                    let atBackup = try EnvironmentState(production)
                    let referenced = Set(try referencedKeys(production))
                    let backup = try await finishedBackup(server, production)
                    try await server.register(acceptance, as: "shop-acceptance")
                    let scratch = try ScratchDirectory("round-trip")
                    defer { scratch.remove() }
                    let archive = scratch.path + "/archive.tar.gz"
                    let downloaded = try await server.backupctl(["download", backup.id, "-o", archive])
                    #expect(downloaded.status == 0, "\(downloaded.standardError)")
                    let size = try #require(try FileManager.default.attributesOfItem(atPath: archive)[.size] as? Int)

                    // backupctl's connection is cut a third of the way in; it goes on by itself.
                    let proxy = try CuttingProxy(upstream: server.address, cutAfter: size / 3)
                    defer { proxy.stop() }
                    let uploaded = try await server.backupctl(["upload", archive, "--env", "acme/shop-acceptance", "--comment", "from production",
                                                         "--addr", proxy.address])
                    #expect(uploaded.status == 0, "\(uploaded.standardError)")
                    #expect(proxy.hasCut && uploaded.standardError.contains("trying again"), "\(uploaded.standardError)")
                    let id = try #require(uploaded.standardOutput.firstMatch(of: /as backup ([0-9a-f-]{36}) of acme\/shop-acceptance/)?.output.1)

                    try await server.withClient { client in
                        let copy = try await client.unary(Backups.getBackup, .with { $0.id = String(id) })
                        #expect(copy.kind == .uploaded && copy.comment == "from production" && copy.packageVersion == "1.0.0")
                        #expect(copy.dumpSHA256 == backup.dumpSHA256 && copy.fileCount == backup.fileCount)
                        _ = try await client.unary(Backups.setEnvironmentState, .with {
                            $0.namespace = "acme"; $0.name = "shop-acceptance"; $0.state = .stopped
                        })
                        let job = try await restore(client, copy, to: "shop-acceptance")
                        #expect(job.status == .finished, "\(job.error)")
                    }
                    let restored = try EnvironmentState(acceptance)
                    #expect(restored.tables == atBackup.tables)
                    #expect(restored.files == atBackup.files.filter { referenced.contains(String($0.key.split(separator: "/").last!)) })
                }
            }
        }
    }
}

/// The memory bounds of validation, at the largest document and at the
/// member cap: long, so apart from the other validation tests.
@Suite(.serialized) struct UploadMemoryTests {
    @Test func a2GiBUploadGrowsTheServerByLessThan64MiB() async throws {
        try await withTestApp { app in
            try await withTestServer { server in
                try await server.register(app)
                let scratch = try ScratchDirectory("big-upload")
                defer { scratch.remove() }
                let dump = scratch.path + "/db.backup"
                #expect(try await runCommand("/usr/bin/pg_dump", ["-Fc", "-d", app.connectionString, "-f", dump]).status == 0)
                func archive(ofOneDocument size: Int) async throws -> String {
                    try await craftPlainArchive(in: scratch, """
                        [('.metadata', b'{"modelVersion": "1.0"}'), ('db/db.backup', open('\(dump)', 'rb').read()),
                         ('tree/ff/ff/ffffffff-0000-4000-8000-000000000001', \(size))]
                        """, level: 0)
                }
                // The server has served an upload before (what the first one costs is not growth).
                let small = try await server.backupctl(["upload", try await archive(ofOneDocument: 1 << 20), "--env", "acme/shop-production"])
                #expect(small.status == 0, "\(small.standardError)")
                // One 2 GiB document, past what a 32-bit count holds, stored as it is (gzip level 0).
                let archive = try await archive(ofOneDocument: 2 << 30)
                var uploaded: CommandResult?
                let growth = try await residentGrowth(of: server.processIdentifier) {
                    uploaded = try await server.backupctl(["upload", archive, "--env", "acme/shop-production"])
                }
                let uploadedBig = try #require(uploaded)
                #expect(uploadedBig.status == 0, "\(uploadedBig.standardError)")
                #expect(growth < 64 << 20, "the server grew by \(growth >> 20) MiB")
                let id = try #require(uploadedBig.standardOutput.firstMatch(of: /as backup ([0-9a-f-]{36})/)?.output.1)
                let copy = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = String(id) }) }
                #expect(copy.filesBytes == 2 << 30 && copy.fileCount == 1)
            }
        }
    }

    /// The stated bound: validating an upload at the member cap (`.metadata`,
    /// the dump and 500,000 documents, the most a backup may hold) grows the
    /// server by less than 256 MiB (a debug build; 194 MiB in the last run),
    /// and the upload becomes a backup of all its documents.
    @Test func anUploadAtTheMemberCapValidatesWithin256MiB() async throws {
        try await withTestApp { app in
            try await withTestServer { server in
                try await server.register(app)
                let scratch = try ScratchDirectory("member-cap")
                defer { scratch.remove() }
                let dump = scratch.path + "/db.backup"
                #expect(try await runCommand("/usr/bin/pg_dump", ["-Fc", "-d", app.connectionString, "-f", dump]).status == 0)
                // Empty documents (one blob for all), named by keys made from their number.
                let documents = """
                    [('tree/%s/%s/%s' % (k[0:2], k[2:4], k), b'')
                     for k in (str(__import__('uuid').UUID(int=i * 2654435761)) for i in range(500000))]
                    """
                let archive = try await craftPlainArchive(in: scratch, """
                    [('.metadata', b'{"modelVersion": "1.0"}'), ('db/db.backup', open('\(dump)', 'rb').read())] + \(documents)
                    """)
                var uploaded: CommandResult?
                let growth = try await residentGrowth(of: server.processIdentifier) {
                    uploaded = try await server.backupctl(["upload", archive, "--env", "acme/shop-production"])
                }
                let result = try #require(uploaded)
                #expect(result.status == 0, "\(result.standardError)")
                #expect(growth < 256 << 20, "the server grew by \(growth >> 20) MiB")
                let id = try #require(result.standardOutput.firstMatch(of: /as backup ([0-9a-f-]{36})/)?.output.1)
                let copy = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = String(id) }) }
                #expect(copy.fileCount == 500_000)
            }
        }
    }
}
