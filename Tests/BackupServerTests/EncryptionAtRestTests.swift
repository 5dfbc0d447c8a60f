import BackupCatalog
import BackupClient
import BackupRules
@testable import BackupServer
import BackupStorage
import BackupTestSupport
import BackupWire
import CZstd
import Foundation
import NIOPosix
import Testing

/// Encryption at rest per namespace (issue 23), end to end through a server:
/// what the store holds after real backups of the demo app, what two
/// namespaces share, and how every kind of tampering with the objects is
/// named by verify and stops a restore with its target untouched.
@Suite(.serialized) struct EncryptionAtRestTests {
    static func encrypting(_ configuration: inout ServerConfiguration) throws {
        configuration.storageKeys = try StorageKeys(parsing: testStorageKeys)
    }

    /// Puts a marker into the app's database (a table of its own) and into
    /// its largest file document (which it overwrites, with incompressible
    /// bytes after the marker); returns the markers and the document's bytes.
    private func markApp(_ app: TestApp) throws -> (database: String, file: String, document: [UInt8]) {
        let (databaseMarker, fileMarker) = ("DATABASE-MARKER-\(UUID().uuidString)", "FILE-MARKER-\(UUID().uuidString)")
        try TestPostgres.query(app.database, "CREATE TABLE secret_notes (note text)")
        try TestPostgres.query(app.database, "INSERT INTO secret_notes VALUES ($1)", databaseMarker)
        let largest = try FileManager.default.subpathsOfDirectory(atPath: app.fileStore)
            .map { app.fileStore + "/" + $0 }
            .filter { (try? FileManager.default.attributesOfItem(atPath: $0)[.type] as? FileAttributeType) == .typeRegular }
            .max { (try? Data(contentsOf: URL(fileURLWithPath: $0)).count) ?? 0 < (try? Data(contentsOf: URL(fileURLWithPath: $1)).count) ?? 0 }
        let document = Array(fileMarker.utf8) + Secure.randomBytes(150_000)
        try Data(document).write(to: URL(fileURLWithPath: try #require(largest)))
        return (databaseMarker, fileMarker, document)
    }

    /// `bytes` decompressed, when they are a zstd frame (a dump chunk kept as is).
    private func decompressed(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) else { return nil }
        let size = bytes.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
        guard size < 1 << 30 else { return nil }
        var output = [UInt8](repeating: 0, count: Int(size))
        let produced = output.withUnsafeMutableBytes { out in bytes.withUnsafeBytes { ZSTD_decompress(out.baseAddress, out.count, $0.baseAddress, $0.count) } }
        return ZSTD_isError(produced) == 0 ? output : nil
    }

    /// Where in everything stored (and in any zstd frame of it, decompressed) a
    /// marker or a 32-byte run of `document` appears.
    private func leaks(in stored: [String: [UInt8]], markers: [String], document: [UInt8]) -> [String] {
        var runs: [UInt64: [Int]] = [:]
        func word(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> UInt64 { bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
        document.withUnsafeBytes { bytes in
            for offset in 0...(bytes.count - 32) { runs[word(bytes, offset), default: []].append(offset) }
        }
        var found: [String] = []
        var everything = stored
        for (name, bytes) in stored { if let content = decompressed(bytes) { everything[name + " (decompressed)"] = content } }
        for (name, bytes) in everything {
            for marker in markers {
                if Data(bytes).range(of: Data(marker.utf8)) != nil { found.append("\(marker) in \(name)") }
            }
            guard bytes.count >= 32 else { continue }
            let hit = bytes.withUnsafeBytes { raw in
                document.withUnsafeBytes { doc in
                    (0...(raw.count - 32)).contains { offset in
                        runs[word(raw, offset)]?.contains { memcmp(raw.baseAddress! + offset, doc.baseAddress! + $0, 32) == 0 } ?? false
                    }
                }
            }
            if hit { found.append("a run of the document in \(name)") }
        }
        return found
    }

    /// Backs up and restores the marked app with or without master keys;
    /// returns what the store then holds that gives a marker or the document away.
    private func leaksOfABackupAndRestore(encrypted: Bool) async throws -> [String] {
        try await withTestApp { app in
            let marked = try markApp(app)
            return try await withInProcessServer(configure: { if encrypted { try Self.encrypting(&$0) } }) { server in
                let backup = try await finishedBackup(server, app)
                try await TestPostgres.query(app.database, "DELETE FROM secret_notes")
                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .finished, "\(job.error)")
                let notes = try await TestPostgres.query(app.database, "SELECT note FROM secret_notes").map { $0.string("note") }
                #expect(notes == [marked.database])
                let restored = try FileManager.default.subpathsOfDirectory(atPath: app.fileStore).contains { path in
                    FileManager.default.contents(atPath: app.fileStore + "/" + path) == Data(marked.document)
                }
                #expect(restored, "the marked document is restored")
                return leaks(in: try await server.everythingStored(), markers: [marked.database, marked.file], document: marked.document)
            }
        }
    }

    @Test func neitherAMarkerNorAnyRunOfADocumentIsInTheStore() async throws {
        // Without keys the same check finds both markers and the document: it can fail.
        let plain = try await leaksOfABackupAndRestore(encrypted: false)
        #expect(plain.contains { $0.hasPrefix("DATABASE-MARKER") } && plain.contains { $0.hasPrefix("FILE-MARKER") }
                && plain.contains { $0.hasPrefix("a run of the document") }, "\(plain)")
        let encrypted = try await leaksOfABackupAndRestore(encrypted: true)
        #expect(encrypted.isEmpty, "\(encrypted)")
    }

    /// The names (and so the objects) each namespace's backups refer to.
    private func objectNames(_ server: InProcessServer, namespace: String) throws -> Set<String> {
        Set(try TestPostgres.query(server.catalogDatabase, """
            SELECT f.blob FROM snapshot_files f JOIN snapshots s ON s.id = f.snapshot_id JOIN environments e ON e.id = s.environment_id
            WHERE e.namespace = $1
            UNION SELECT c.blob FROM dump_chunks c JOIN snapshots s ON s.id = c.snapshot_id JOIN environments e ON e.id = s.environment_id
            WHERE e.namespace = $1
            """, namespace).map { $0.string("blob") })
    }

    /// A finished backup of `namespace`'s shop-production, asked for with `token`.
    private static func backUp(_ server: InProcessServer, _ namespace: String, token: String) async throws -> Backup {
        try await server.withClient(token: token) { client in
            let created = try await client.unary(Backups.createBackup, .with { $0.namespace = namespace; $0.environment = "shop-production" })
            let job = try await waitForJob(created.job.id, on: client)
            #expect(job.status == .finished, "\(job.error)")
            return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
        }
    }

    @Test func twoNamespacesWithTheSameContentShareNoObjectAndEachDeduplicatesItsOwn() async throws {
        try await withTestApp { first in
            try await withTestApp { second in
                try await withInProcessServer(configure: Self.encrypting) { server in
                    try await server.register(first, as: "shop-production")
                    try await server.register(second, as: "shop-production", in: "globex")
                    let globexToken = try await server.makeToken(.admin, namespace: "globex")
                    func backUp(_ namespace: String) async throws -> Backup {
                        try await Self.backUp(server, namespace, token: namespace == "globex" ? globexToken : server.adminToken)
                    }
                    let acme = try await backUp("acme"), globex = try await backUp("globex")
                    // The same files and rows: the same content in both (the dumps' headers name their databases and times).
                    func contentHashes(_ backup: Backup) async throws -> Set<String> {
                        Set(try await TestPostgres.query(server.catalogDatabase, """
                            SELECT sha256 FROM snapshot_files WHERE snapshot_id = $1 UNION SELECT blob_sha256 FROM dump_chunks WHERE snapshot_id = $1
                            """, backup.id).map { $0.string("sha256") })
                    }
                    let (acmeContent, globexContent) = (try await contentHashes(acme), try await contentHashes(globex))
                    #expect(acmeContent.intersection(globexContent).count > acmeContent.count / 2)
                    let (acmeObjects, globexObjects) = (try objectNames(server, namespace: "acme"), try objectNames(server, namespace: "globex"))
                    #expect(!acmeObjects.isEmpty && acmeObjects.isDisjoint(with: globexObjects))
                    #expect(acmeObjects.isDisjoint(with: acmeContent), "no object is kept under its content's hash")
                    let stored = try await server.storedBlobs()
                    #expect(stored == acmeObjects.union(globexObjects).compactMap(ContentHash.init(hex:)).reduce(into: Set()) { $0.insert($1) })

                    // A second night of unchanged data stores only the dump's first chunk (its header) again.
                    _ = try await backUp("acme")
                    let added = try await server.storedBlobs().subtracting(stored)
                    #expect(added.count <= 1, "\(added)")
                    #expect(try objectNames(server, namespace: "acme").subtracting(acmeObjects).count == added.count)
                }
            }
        }
    }

    /// Crypto-shredding: once a namespace's data key is deleted (with its
    /// backups, in one transaction, refused while a job works on it), nobody
    /// reads what the store keeps of it, not even the namespace's next key,
    /// and collection removes it all; another namespace is untouched.
    @Test func aNamespaceWhoseKeyIsShreddedIsReadByNobodyAndItsObjectsAreCollected() async throws {
        try await withTestApp { first in
            try await withTestApp { second in
                let gate = try GatedTool("pg_dump")
                try await withInProcessServer(configure: { try Self.encrypting(&$0); $0.jobs.tools.pgDump = gate.path }) { server in
                    gate.release()
                    try await server.register(first, as: "shop-production")
                    try await server.register(second, as: "shop-production", in: "globex")
                    let globexToken = try await server.makeToken(.admin, namespace: "globex")
                    let acme = try await Self.backUp(server, "acme", token: server.adminToken)
                    let globex = try await Self.backUp(server, "globex", token: globexToken)
                    let wrapped = try #require(try await server.catalog.namespaceKey("acme"))

                    // A backup held in pg_dump: the shred is refused, naming the job, and changes nothing.
                    gate.hold()
                    let running = try await server.withClient { client in
                        try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    }
                    try await eventually(within: .seconds(60)) { gate.hasStarted }
                    await #expect(throws: BackupError.failedPrecondition(
                        "namespace acme is running backup job \(running.job.id) in acme/shop-production; wait for its jobs to end or cancel them")) {
                        _ = try await server.catalog.shredNamespaceKey("acme", actor: "test", dryRun: false)
                    }
                    gate.release()
                    #expect(try await server.withClient { try await waitForJob(running.job.id, on: $0) }.status == .finished)
                    #expect(try await server.catalog.namespaceKey("acme") == wrapped)

                    let acmeObjects = Set(try objectNames(server, namespace: "acme").compactMap(ContentHash.init(hex:)))
                    let plan = try await server.catalog.shredNamespaceKey("acme", actor: "test", dryRun: true)
                    #expect(plan == NamespaceShred(namespace: "acme", keyID: wrapped.keyID, backups: 2, uploads: 0))
                    #expect(try await server.catalog.namespaceKey("acme") == wrapped, "a dry run changes nothing")
                    #expect(try await server.catalog.shredNamespaceKey("acme", actor: "test", dryRun: false) == plan)
                    #expect(try await server.catalog.namespaceKey("acme") == nil)
                    #expect(try objectNames(server, namespace: "acme").isEmpty)

                    // Before collection, the objects are there, and neither the namespace's next key nor another's opens them.
                    #expect(acmeObjects.isSubset(of: try await server.storedBlobs()))
                    let masterKeys = try StorageKeys(parsing: testStorageKeys)
                    _ = try await NamespaceStores(base: try server.storage.open(), masterKeys: masterKeys, catalog: server.catalog).store(for: "acme")
                    for namespace in ["acme", "globex"] {
                        let key = try #require(try await server.catalog.namespaceKey(namespace))
                        let keys = NamespaceKeys(dataKey: try masterKeys.unwrap(key.wrapped, keyID: key.keyID))
                        for name in acmeObjects.prefix(8) {
                            let object = try await server.storedObject(name)
                            let opener = try ContentOpener(keys: keys, header: Array(object.prefix(SegmentedEncryption.headerSize)),
                                                           sealedSize: UInt64(object.count))
                            let segment = SegmentedEncryption.sealedRange(ofSegment: 0, contentSize: opener.contentSize)
                            #expect(throws: SealedContentError.segmentDoesNotOpen(0), "\(name) opens with \(namespace)'s key") {
                                try opener.open(segment: 0, object[Int(segment.lowerBound)..<Int(segment.upperBound)])
                            }
                        }
                    }
                    let collected = try await BlobCollector(catalog: server.catalog, store: try server.storage.open(),
                                                            threadPool: NIOThreadPool.singleton).collect()
                    #expect(collected >= acmeObjects.count)
                    #expect(try await server.storedBlobs().isDisjoint(with: acmeObjects))

                    // Globex's backup still verifies; acme backs up again, under a new key.
                    try await server.withClient(token: globexToken) { client in
                        let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = globex.id })
                        #expect(try await waitForJob(verifying.id, on: client).status == .finished)
                    }
                    let again = try await Self.backUp(server, "acme", token: server.adminToken)
                    #expect(again.status == .finished && acme.id != again.id)
                    #expect(try await server.catalog.namespaceKey("acme").map(\.wrapped) != wrapped.wrapped)
                    await #expect(throws: BackupError.notFound("namespace nobody does not exist")) {
                        _ = try await server.catalog.shredNamespaceKey("nobody", actor: "test", dryRun: true)
                    }
                }
            }
        }
    }

    @Test func aDownloadAndAnUploadOfItGoThroughTheNamespacesKeys() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true, configure: Self.encrypting) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let scratch = try ScratchDirectory("encrypted-download")
                defer { scratch.remove() }
                #expect(try await curl(["-o", scratch.path + "/whole", download.url]).status == 0)
                let whole = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/whole"))
                #expect(UInt64(whole.count) == download.sizeBytes && ContentHash.of(whole).hex == download.sha256)
                // A range across segments' edges is read from its segments alone.
                #expect(try await curl(["-o", scratch.path + "/part", "-r", "65000-200000", download.url]).status == 0)
                #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/part")) == whole[65000...200000])
                let listed = try await runCommand("/bin/tar", ["-tzf", scratch.path + "/whole"])
                #expect(listed.status == 0 && listed.standardOutput.hasPrefix(".metadata\ndb/db.backup\n"))

                // The archive uploaded back: its segments, documents and dump are the namespace's objects, and it restores.
                let (upload, job) = try await server.withClient { try await uploadAndValidate($0, Array(whole)) }
                #expect(job.status == .finished && upload.state == .finished, "\(job.error)")
                let uploaded = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = upload.backupID }) }
                let restored = try await server.withClient { try await restore($0, uploaded) }
                #expect(restored.status == .finished, "\(restored.error)")
                // Helper finding: with the archive's sealed object gone and bytes of its length put under its content hash (by
                // someone who can write the store), a download's ranges, which nothing checks, served them; now no such download.
                let archive = try await TestPostgres.query(server.catalogDatabase, "SELECT blob FROM archives WHERE sha256 = $1", download.sha256)
                let archiveName = try #require(ContentHash(hex: archive[0].string("blob")))
                let sealed = try await server.storedObject(archiveName)
                try await server.removeBlob(archiveName)
                try await server.storage.replaceContent(of: try #require(ContentHash(hex: download.sha256)),
                                                        with: [UInt8](repeating: 0x41, count: whole.count))
                let forged = try await curl(["-o", scratch.path + "/forged", "-r", "0-1023", "-w", "%{http_code}", download.url])
                #expect(forged.standardOutput == "404")
                #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/forged")).first != 0x41)
                try await server.removeBlob(try #require(ContentHash(hex: download.sha256)))
                try await server.storage.replaceContent(of: archiveName, with: sealed)

                let names = try await TestPostgres.query(server.catalogDatabase, "SELECT sha256 FROM blobs").map { $0.string("sha256") }
                for name in names {
                    let object = try await server.storedObject(try #require(ContentHash(hex: name)))
                    #expect(object.starts(with: SegmentedEncryption.magic), "\(name) is kept encrypted")
                }
            }
        }
    }

    /// An operator turns encryption on for a store written without it: the
    /// backups made before still verify and restore (read as they were kept),
    /// new ones are kept encrypted, `backupd store migrate` (in two runs,
    /// while backupd serves) copies what the old backups use encrypted and
    /// removes the plain objects, and what only a deleted backup used goes
    /// with it. Then the keys commands: list, rotate, shred. A process
    /// restarted with a new setting, and the commands, are the point.
    @Test func aStoreWrittenBeforeEncryptionStaysReadableAndItsPlainObjectsGoWithTheirBackups() async throws {
        try await withTestApp { app in
            try await withTestApp { staging in
                try await withTestServer { plain in
                    // Two environments of one namespace holding the same data (staging a copy of production), in many chunks.
                    try addBulkTable(app)
                    try addBulkTable(staging)
                    let old = try await finishedBackup(plain, app)
                    let oldStaging = try await finishedBackup(plain, staging, name: "shop-staging")
                    await plain.stop()
                    let scratch = try ScratchDirectory("storage-keys")
                    defer { scratch.remove() }
                    try testStorageKeys.write(toFile: scratch.path + "/storage-keys", atomically: true, encoding: .utf8)
                    func restart(keys: Bool = true) async throws -> TestServer {
                        try await TestServer.start(arguments: keys ? ["--storage-keys", scratch.path + "/storage-keys"] : [],
                                                   catalogDatabase: plain.catalogDatabase, storage: plain.storage,
                                                   adminToken: plain.adminToken, platformToken: plain.platformToken)
                    }
                    let encrypted = try await restart()
                    let plainObjects = try await encrypted.storedBlobs()
                    let created = try await encrypted.withClient { client in
                        let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = old.id })
                        #expect(try await waitForJob(verifying.id, on: client).status == .finished)
                        #expect(try await restore(client, old).status == .finished)
                        func backUp(_ environment: String) async throws -> Backup {
                            _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = TestServer.namespace; $0.name = environment; $0.state = .running })
                            let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = environment })
                            #expect(try await waitForJob(created.job.id, on: client).status == .finished)
                            _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = TestServer.namespace; $0.name = environment; $0.state = .stopped })
                            return created.backup
                        }
                        // Staging first: when production backs up, the encrypted copies of its old chunks exist already.
                        _ = try await backUp("shop-staging")
                        let created = try await backUp("shop-production")
                        _ = try await client.unary(Backups.deleteBackup, .with { $0.id = oldStaging.id })
                        return created
                    }
                    // Helper finding: production's next dump reused its last backup's plain chunks by their plain names, which the
                    // encrypted copies made by staging seemed to stand for; such a backup kept plain objects alive for ever.
                    let plainNamed = try await TestPostgres.query(plain.catalogDatabase, """
                        SELECT (SELECT count(*) FROM dump_chunks WHERE snapshot_id = $1 AND blob = blob_sha256)
                             + (SELECT count(*) FROM snapshot_files WHERE snapshot_id = $1 AND blob = sha256) AS n
                        """, created.id)
                    #expect(plainNamed[0].string("n") == "0")
                    #expect(encrypted.log.contains("new content is kept encrypted per namespace"))

                    // backupd store migrate, beside the serving process, in two runs: the old backup's objects copied encrypted,
                    // its rows pointed at them, and every plain object removed (the deleted staging backup's with them).
                    let storage = try await plain.storage.processSettings()
                    func store(_ arguments: String...) async throws -> CommandResult {
                        try await runCommand("\(binDirectory)/backupd", ["store"] + arguments + ["--storage-keys", scratch.path + "/storage-keys"]
                                                + storage.arguments,
                                             environment: storage.environment.merging(
                                                ["BACKUPD_CATALOG": TestPostgres.connectionString(plain.catalogDatabase)]) { $1 })
                    }
                    let planned = try await store("migrate", "--dry-run")
                    #expect(planned.status == 0 && planned.standardOutput.hasPrefix("acme\t")
                            && planned.standardOutput.hasSuffix("# 1 namespaces use content kept unencrypted\n"), "\(planned.standardError)")
                    let firstRun = try await store("migrate", "--max-objects", "3")
                    #expect(firstRun.status == 0 && firstRun.standardOutput.contains("copied 3 objects")
                            && firstRun.standardOutput.hasSuffix("are still in use (run again)\n"), "\(firstRun.standardOutput)\(firstRun.standardError)")
                    let secondRun = try await store("migrate")
                    #expect(secondRun.status == 0 && secondRun.standardOutput.hasSuffix("0 objects kept unencrypted are still in use\n"),
                            "\(secondRun.standardOutput)\(secondRun.standardError)")
                    let stillPlain = try await TestPostgres.query(plain.catalogDatabase, """
                        SELECT (SELECT count(*) FROM dump_chunks WHERE blob = blob_sha256) + (SELECT count(*) FROM snapshot_files WHERE blob = sha256) AS n
                        """)
                    #expect(stillPlain[0].string("n") == "0")
                    #expect(try await encrypted.storedBlobs().isDisjoint(with: plainObjects))
                    for name in try await encrypted.storedBlobs() {
                        #expect(try await encrypted.storedObject(name).starts(with: SegmentedEncryption.magic))
                    }
                    try await encrypted.withClient { client in
                        let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = old.id })
                        #expect(try await waitForJob(verifying.id, on: client).status == .finished)
                        #expect(try await restore(client, old).status == .finished)
                    }
                    await encrypted.stop()
                    // Helper finding: a process started without the key file read none of the encrypted content and stored
                    // new content unencrypted. Once a namespace has a key, it refuses to start.
                    await #expect { _ = try await restart(keys: false) } throws: { "\($0)".contains("--storage-keys") }

                    // The operator's commands, on the same catalog: which master key wraps what, and a rotation to a third key.
                    func keys(_ command: String...) async throws -> CommandResult {
                        try await runCommand("\(binDirectory)/backupd", ["keys"] + command + ["--storage-keys", scratch.path + "/storage-keys"],
                                             environment: ["BACKUPD_CATALOG": TestPostgres.connectionString(plain.catalogDatabase)])
                    }
                    let listed = try await keys("list")
                    #expect(listed.status == 0 && listed.standardOutput.hasPrefix("acme\ttest-storage-new\n"), "\(listed.standardError)")
                    #expect(listed.standardOutput.contains("# 1 namespaces; by master key: test-storage-old: 0, test-storage-new: 1"))
                    try (testStorageKeys + "\ntest-storage-newest = \(base64URL(Array(repeating: 8, count: 32)))\n")
                        .write(toFile: scratch.path + "/storage-keys", atomically: true, encoding: .utf8)
                    let rotated = try await keys("rotate")
                    #expect(rotated.status == 0 && rotated.standardOutput == "wrapped 1 namespace keys again with test-storage-newest; 0 already were\n",
                            "\(rotated.standardOutput)\(rotated.standardError)")
                    let collected = try await restart()
                    #expect(try await collected.withClient { try await restore($0, created) }.status == .finished)

                    // Shredding the namespace's key asks for --yes, says what it would delete, and deletes it.
                    // Helper findings: a refusal as it ran printed the usage and exited 64, and a long name came back whole.
                    let unconfirmed = try await keys("shred", "acme")
                    #expect(unconfirmed.status == 1 && !unconfirmed.standardError.contains("USAGE") && unconfirmed.standardError.contains(
                        "this deletes the data key of namespace acme (wrapped by test-storage-newest), its 3 backups and 0 uploads, for ever; "
                            + "run again with --yes"), "\(unconfirmed.standardError)")
                    let longName = try await keys("shred", String(repeating: "x", count: 100_000), "--yes")
                    #expect(longName.status == 64 && longName.standardError.count < 2_000 && longName.standardError.contains("(100000 bytes)"),
                            "\(longName.standardError.prefix(2_000))")
                    let missing = try await keys("shred", "nobody", "--yes")
                    #expect(missing.status == 1 && missing.standardError.contains("namespace nobody does not exist")
                            && !missing.standardError.contains("USAGE"), "\(missing.standardError)")
                    let shredPlan = try await keys("shred", "acme", "--dry-run")
                    #expect(shredPlan.status == 0 && shredPlan.standardOutput.hasPrefix("would delete the data key of namespace acme"))
                    let shredded = try await keys("shred", "acme", "--yes")
                    #expect(shredded.status == 0 && shredded.standardOutput.hasPrefix("deleted the data key of namespace acme"),
                            "\(shredded.standardError)")
                    #expect(try await keys("list").standardOutput.hasPrefix("# 0 namespaces"))
                    await collected.remove()
                }
            }
        }
    }

    /// A master key rotated in the steps `backupd keys rotate` documents,
    /// while a backup runs: the running backup finishes, backups made before
    /// and during it restore, and once every namespace's key is wrapped with
    /// the new master key the old one is no longer needed (and alone reads nothing).
    @Test func aMasterKeyRotatedWhileABackupRunsLeavesEveryBackupReadable() async throws {
        let (old, new) = (base64URL(Array(repeating: 3, count: 32)), base64URL(Array(repeating: 5, count: 32)))
        let (stepOneText, stepTwoText) = ("old = \(old)\nnew = \(new)\nwrap-with old\n", "old = \(old)\nnew = \(new)\n")
        let stepTwo = try StorageKeys(parsing: stepTwoText)
        let folder = try ScratchDirectory("rotated")
        defer { folder.remove() }
        let keyFile = folder.path + "/storage-keys"
        try stepOneText.write(toFile: keyFile, atomically: true, encoding: .utf8)
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(configure: {
                $0.storageKeys = try StorageKeys(reading: keyFile)
                $0.storageKeyFile = keyFile
                $0.jobs.tools.pgDump = gate.path
            }) { server in
                gate.release()
                let before = try await finishedBackup(server, app)
                #expect(try await server.catalog.namespaceKey("acme")?.keyID == "old")
                // Step two reaches the running server by a reload.
                try stepTwoText.write(toFile: keyFile, atomically: true, encoding: .utf8)
                #expect(try await server.reload().contains("storage keys old, new, wrapping with new"))
                _ = try await server.withClient { client in
                    try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.state = .running })
                }
                gate.hold()
                let during = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                }
                try await eventually(within: .seconds(60)) { gate.hasStarted }
                let rotated = try await stepTwo.wrapAgain(in: server.catalog)
                #expect(rotated.wrapped == 1 && rotated.alreadyCurrent == 0)
                #expect(try await stepTwo.wrapAgain(in: server.catalog) == (0, 1))
                #expect(try await server.catalog.namespaceKey("acme")?.keyID == "new")
                gate.release()
                try await server.withClient { client in
                    #expect(try await waitForJob(during.job.id, on: client).status == .finished)
                    _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.state = .stopped })
                    for backup in [before, during.backup] {
                        let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                        #expect(try await waitForJob(verifying.id, on: client).status == .finished)
                    }
                    #expect(try await restore(client, before).status == .finished)
                }
                // The new master key alone reads every backup; the old one alone reads nothing now.
                let dump = try storedDump(server, before.id)
                let newOnly = NamespaceStores(base: try server.storage.open(), masterKeys: try StorageKeys(parsing: "new = \(new)\n"),
                                              catalog: server.catalog)
                let store = try await newOnly.store(for: "acme")
                try await onThread { try dump.materialize(at: folder.path + "/dump", from: store, interruption: nil) }
                let oldOnly = NamespaceStores(base: try server.storage.open(), masterKeys: try StorageKeys(parsing: "old = \(old)\n"),
                                              catalog: server.catalog)
                await #expect(throws: BackupError.failedPrecondition(
                    "a namespace's data key is wrapped with storage key new, which the storage key file does not list")) {
                    _ = try await oldOnly.store(for: "acme")
                }
                // Helper finding: a key file lacking a master key in use failed every job of its namespaces; a reload refuses it,
                // and one without the old key, which no namespace's key needs now, is taken.
                try "old = \(old)\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
                await #expect { _ = try await server.reload() } throws: { "\($0)".contains("lacks master keys new") }
                try "new = \(new)\n".write(toFile: keyFile, atomically: true, encoding: .utf8)
                #expect(try await server.reload().contains("storage keys new, wrapping with new"))
            }
        }
    }

    /// Content of the backup's file documents that no other file shares, by storage key: (key, content hash, object name).
    private func uniqueFiles(_ server: InProcessServer, _ backup: Backup) throws -> [(key: String, hash: String, name: ContentHash)] {
        try TestPostgres.query(server.catalogDatabase, """
            SELECT storage_key, sha256, blob FROM snapshot_files WHERE snapshot_id = $1
              AND sha256 IN (SELECT sha256 FROM snapshot_files WHERE snapshot_id = $1 GROUP BY sha256 HAVING count(*) = 1)
              AND size > 70000
            ORDER BY storage_key
            """, backup.id).map { ($0.string("storage_key"), $0.string("sha256"), ContentHash(hex: $0.string("blob"))!) }
    }

    @Test func everyTamperingIsNamedByVerifyAndStopsARestoreWithTheTargetUntouched() async throws {
        try await withTestApp { app in
            try await withTestApp { other in
                // Documents of more than one segment, each of its own content.
                let documents = try FileManager.default.subpathsOfDirectory(atPath: app.fileStore).map { app.fileStore + "/" + $0 }
                    .filter { (try? FileManager.default.attributesOfItem(atPath: $0)[.type] as? FileAttributeType) == .typeRegular }
                    .sorted().prefix(4)
                for path in documents { try Data(Secure.randomBytes(100_000)).write(to: URL(fileURLWithPath: path)) }
                try await withInProcessServer(configure: Self.encrypting) { server in
                    let backup = try await finishedBackup(server, app)
                    try await server.register(other, as: "shop-production", in: "globex")
                    let foreign = try await server.withClient(token: try await server.makeToken(.admin, namespace: "globex")) { client in
                        let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "globex"; $0.environment = "shop-production" })
                        return try await waitForJob(created.job.id, on: client)
                    }
                    #expect(foreign.status == .finished)
                    let files = try uniqueFiles(server, backup)
                    try #require(files.count == 4)
                    let foreignObject = try #require(try objectNames(server, namespace: "globex").first.flatMap(ContentHash.init(hex:)))
                    let (flipped, truncated, swappedA, swappedB) = (files[0], files[1], files[2], files[3])
                    // A flipped byte in a segment.
                    var bytes = try await server.storedObject(flipped.name)
                    bytes[bytes.count / 2] ^= 0x01
                    try await server.storage.replaceContent(of: flipped.name, with: bytes)
                    // Cut at a segment's edge (its address tag kept): what is now its last segment was not sealed as the last.
                    bytes = try await server.storedObject(truncated.name)
                    let kept = SegmentedEncryption.headerSize + SegmentedEncryption.segmentSize + SegmentedEncryption.tagSize
                    try await server.storage.replaceContent(of: truncated.name,
                                                            with: Array(bytes.prefix(kept)) + Array(bytes.suffix(SegmentedEncryption.addressTagSize)))
                    // Two objects of the namespace swapped.
                    let (a, b) = (try await server.storedObject(swappedA.name), try await server.storedObject(swappedB.name))
                    try await server.storage.replaceContent(of: swappedA.name, with: b)
                    try await server.storage.replaceContent(of: swappedB.name, with: a)
                    // Another namespace's object copied over the dump's first chunk.
                    let chunk = try storedDump(server, backup.id).blobs[0]
                    try await server.storage.replaceContent(of: chunk.name, with: try await server.storedObject(foreignObject))

                    try changeEverything(app)
                    let before = try EnvironmentState(app)
                    try await server.withClient { client in
                        let restored = try await restore(client, backup)
                        #expect(restored.status == .failed && restored.error.contains("corrupt"), "\(restored.error)")
                        #expect(try EnvironmentState(app) == before)
                        try noStagingLeft(app)

                        let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                        #expect(try await waitForJob(verifying.id, on: client).status == .failed)
                        let verification = try #require(try await client.unary(Backups.getBackup, .with { $0.id = backup.id }).verification)
                        let problems = Dictionary(uniqueKeysWithValues: verification.problems.map { ($0.name, $0.problem) })
                        #expect(verification.problemCount == 5, "\(problems)")
                        #expect(problems[flipped.key] == "corrupt: it does not open at its segment 0: changed, cut, moved, or another object's")
                        #expect(problems[truncated.key] == "corrupt: it does not open at its segment 0: changed, cut, moved, or another object's")
                        for swapped in [swappedA.key, swappedB.key] {
                            #expect(problems[swapped] == "corrupt: it is not this blob's: another blob's or namespace's object, "
                                    + "or its header or tag was changed")
                        }
                        #expect(problems.first { $0.key.hasPrefix("db/db.backup") }?.value.hasPrefix("corrupt: it ") == true, "\(problems)")
                    }
                }
            }
        }
    }
}
