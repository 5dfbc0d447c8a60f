import BackupCore
import Foundation
import Testing

@Suite struct FileQueryTests {
    @Test func theMendixQueryIsAcceptedAndRunsWithEveryNameQuoted() throws {
        let query = try FileQuery(parsing: #"SELECT "__uuid__" FROM "system$filedocument" WHERE "hascontents" AND NOT "deleteafterdownload""#)
        #expect(query.sql == #"SELECT "__uuid__" FROM "system$filedocument" WHERE ("hascontents" AND (NOT "deleteafterdownload"))"#)
        // Rendering is stable: what is stored parses to the same query.
        #expect(try FileQuery(parsing: query.sql) == query)
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
