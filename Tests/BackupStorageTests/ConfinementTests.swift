import BackupRules
import BackupStorage
import BackupTestSupport
import Foundation
import Testing

@Suite struct FileQueryTests {
    @Test func theMendixQueryIsAcceptedAndRunsWithEveryNameQuoted() throws {
        let query = try FileQuery(parsing: #"SELECT "__uuid__" FROM "system$filedocument" WHERE "hascontents" AND NOT "deleteafterdownload""#)
        #expect(query.sql == #"SELECT "__uuid__" FROM "system$filedocument" WHERE ("hascontents" AND (NOT "deleteafterdownload"))"#)
        // Rendering is stable: what is stored parses to the same query.
        #expect(try FileQuery(parsing: query.sql) == query)
        #expect(query.sqlAmongKeys == #"SELECT "__uuid__"::text FROM "system$filedocument" WHERE "__uuid__"::text = ANY($1::text[]) AND ("hascontents" AND (NOT "deleteafterdownload"))"#)
    }

    @Test func conditionsCompareColumnsWithConstantsOnly() throws {
        let query = try FileQuery(parsing: """
            select key from app.documents where (kind = 'it''s' or size >= 10) and deleted is not true and owner is null and x != 1.5
            """)
        #expect(query.sql == """
            SELECT "key" FROM "app"."documents" WHERE ((((("kind" = 'it''s') OR ("size" >= 10)) AND ("deleted" IS NOT TRUE)) \
            AND ("owner" IS NULL)) AND ("x" <> 1.5))
            """)
    }

    @Test(arguments: [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT key FROM docs WHERE pg_sleep(10) IS NULL",
        "SELECT key FROM docs; DROP TABLE docs",
        "SELECT key FROM (SELECT 1 AS key) AS s",
        "SELECT key FROM docs -- trailing",
        "SELECT key FROM docs /* c */",
        "SELECT key, other FROM docs",
        "SELECT * FROM docs",
        "SELECT key FROM docs WHERE key = 'a\\' OR true --'",
        "SELECT key FROM docs WHERE key IN (SELECT 1)",
        "SELECT key FROM docs WHERE",
        "SELECT \"unterminated FROM docs",
        "SELECT key FROM docs WHERE key = $1",
        "",
    ])
    func anythingElseIsRefused(_ text: String) {
        #expect(throws: BackupError.self) { try FileQuery(parsing: text) }
    }
}

@Suite struct FileStoreRulesTests {
    @Test func storesOverlapWhenOneHoldsTheOtherOrItsRestoreFolders() {
        #expect(fileStoresOverlap("/r/app", "/r/app"))
        #expect(fileStoresOverlap("/r/app", "/r/app/0d"))
        #expect(fileStoresOverlap("/r/app/0d", "/r/app"))
        #expect(fileStoresOverlap("/r/app", "/r/app.prerestore"))
        #expect(fileStoresOverlap("/r/app.prerestore/x", "/r/app"))
        #expect(fileStoresOverlap("/r/app.restore-1234abcd", "/r/app"))
        #expect(!fileStoresOverlap("/r/app", "/r/app2"))
        #expect(!fileStoresOverlap("/r/app", "/r/ap"))
        #expect(!fileStoresOverlap("/r/app-files", "/r/app"))
    }

    @Test func withoutRootsNoStoreIsAccepted() throws {
        let rules = try FileStoreRules(roots: [], reserved: [])
        #expect(throws: BackupError.failedPrecondition("backupd has no file store roots; start it with --file-store-root to allow file stores")) {
            try rules.check("/tmp/files", others: [])
        }
    }

    @Test func rootsMustBeCanonicalFoldersOutsideBackupdsOwn() throws {
        let root = canonicalPath(FileManager.default.temporaryDirectory.path)!
        #expect(throws: BackupError.self) { try FileStoreRules(roots: [root + "/"], reserved: []) }
        #expect(throws: BackupError.self) { try FileStoreRules(roots: ["/does/not/exist"], reserved: []) }
        #expect(throws: BackupError.self) { try FileStoreRules(roots: [root], reserved: [root]) }
        let rules = try FileStoreRules(roots: [root], reserved: [root + "/blobs"])
        #expect(try rules.check(root + "/app-\(UUID().uuidString)", others: []).hasPrefix(root))
    }
}

@Suite struct RemoveTreeTests {
    /// A tree whose folders are swapped for links to a folder outside it
    /// while it is being removed, as an app writing into its previous file
    /// store could: nothing outside is touched, whatever the timing.
    @Test func foldersSwappedForLinksDuringRemovalLeaveTheOutsideAlone() throws {
        let root = canonicalPath(FileManager.default.temporaryDirectory.path)! + "/removetree-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let outside = root + "/outside", tree = root + "/tree"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        for index in 0..<50 { try "keep \(index)".write(toFile: "\(outside)/file-\(index)", atomically: false, encoding: .utf8) }
        for folder in 0..<120 {
            let path = "\(tree)/\(String(format: "f%03d", folder))"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            for file in 0..<40 { try Data().write(to: URL(fileURLWithPath: "\(path)/doc-\(file)")) }
        }
        try FileManager.default.createSymbolicLink(atPath: tree + "/planted-link", withDestinationPath: outside)
        try Data("marker".utf8).write(to: URL(fileURLWithPath: tree + "/.marker"))

        let done = Atomic(false)
        let stopped = DispatchSemaphore(value: 0)
        let swapper = Thread {
            defer { stopped.signal() }
            var round = 0
            while !done.value && round < 2000 {
                let folder = "\(tree)/\(String(format: "f%03d", 119 - round % 120))"
                if rename(folder, folder + "-moved-\(round)") == 0 { _ = symlink(outside, folder) }
                round += 1
            }
        }
        swapper.start()
        try? removeTree(tree, removingLast: ".marker")
        done.value = true
        stopped.wait()
        let kept = try FileManager.default.contentsOfDirectory(atPath: outside)
        #expect(kept.count == 50)
        try? removeTree(tree, removingLast: ".marker")
        #expect(!FileManager.default.fileExists(atPath: tree))
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).count == 50)
    }

    @Test func aMissingTreeIsNoErrorAndFIFOsAndSocketsGoWithoutBlocking() throws {
        let root = canonicalPath(FileManager.default.temporaryDirectory.path)! + "/removetree-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try removeTree(root + "/absent")
        try FileManager.default.createDirectory(atPath: root + "/tree/sub", withIntermediateDirectories: true)
        #expect(mkfifo(root + "/tree/sub/fifo", 0o600) == 0)
        try Data().write(to: URL(fileURLWithPath: root + "/tree/.marker"))
        try removeTree(root + "/tree", removingLast: ".marker")
        #expect(!FileManager.default.fileExists(atPath: root + "/tree"))
    }
}

@Suite struct BoundedReadTests {
    @Test func aDocumentIsReadNoFurtherThanItsSizeWhenOpened() throws {
        let root = canonicalPath(FileManager.default.temporaryDirectory.path)! + "/bounded-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        // A source that never ends stops at the limit.
        let blob = try store.put(reading: LocalFile.open("/dev/zero"), upTo: 3 * 1024 * 1024 + 5, interruption: nil)
        #expect(blob.size == 3 * 1024 * 1024 + 5)
        #expect(blob.hash == ContentHash.of([UInt8](repeating: 0, count: 3 * 1024 * 1024 + 5)))
    }

    /// The helper's finding against restores holds for backups too: a
    /// folder above a store swapped for a link (to another tenant's store)
    /// after the placement check. The store is reached from `/` without
    /// following a link, so its documents are never read from elsewhere.
    @Test func aStoreReachedThroughALinkAboveItIsNotOpened() throws {
        let scratch = try ScratchDirectory("reader-ancestor")
        defer { scratch.remove() }
        try FileManager.default.createDirectory(atPath: scratch.path + "/victim/data/files", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: scratch.path + "/evil", withDestinationPath: "victim")
        #expect(throws: BlobStoreError.self) { _ = try FileStoreReader(path: scratch.path + "/evil/data/files") }
        _ = try FileStoreReader(path: scratch.path + "/victim/data/files")
    }

}
