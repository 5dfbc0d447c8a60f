import BackupRules
@testable import BackupStorage
import Foundation
import Testing

@Suite struct ContentHashTests {
    @Test func knownVectors() {
        #expect(ContentHash.of(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(ContentHash.of([]).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func onlyLowercaseHexOfTheRightLengthIsAHash() {
        #expect(ContentHash(hex: String(repeating: "a", count: 64)) != nil)
        #expect(ContentHash(hex: String(repeating: "A", count: 64)) == nil)
        #expect(ContentHash(hex: String(repeating: "a", count: 63)) == nil)
        #expect(ContentHash(hex: "../" + String(repeating: "a", count: 61)) == nil)
    }
}

@Suite struct AccessTokenSecretTests {
    @Test func base64URLMatchesRFC4648() {
        #expect(base64URL(Array("".utf8)) == "")
        #expect(base64URL(Array("f".utf8)) == "Zg")
        #expect(base64URL(Array("fo".utf8)) == "Zm8")
        #expect(base64URL(Array("foo".utf8)) == "Zm9v")
        #expect(base64URL(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(base64URL([0xfb, 0xff]) == "-_8")
    }

    @Test func secretsAreRandomAndStoredOnlyAsAHash() {
        let first = AccessTokenSecret(), second = AccessTokenSecret()
        #expect(first.text != second.text)
        #expect(first.text.hasPrefix("bkd_") && first.text.count == 4 + 43)
        #expect(AccessTokenSecret(presented: first.text).digest == first.digest)
        // Printed or reflected (a log line, a dumped configuration), the secret shows as redacted.
        #expect(!"\(first)".contains(first.text.dropFirst(4)) && !String(reflecting: first).contains(first.text.dropFirst(4)))
        #expect(first.digest != second.digest)
        #expect(!first.digest.hex.contains(first.text.dropFirst(4)))
    }
}

@Suite struct FileStoreLayoutTests {
    @Test func uuidKeysGoInTwoFolders() throws {
        #expect(try FileStoreLayout.relativePath(forKey: "0d3e301f-5551-46f8-ad44-8de2be084c95")
                == "0d/3e/0d3e301f-5551-46f8-ad44-8de2be084c95")
    }

    @Test(arguments: ["", "abc", "../../etc/passwd", "ab/cd/ef", "..ab", "a b c d", "abcd\u{0}", String(repeating: "a", count: 201)])
    func keysThatCouldEscapeTheStoreAreRefused(_ key: String) {
        #expect(throws: FileStoreLayout.InvalidKey.self) { try FileStoreLayout.relativePath(forKey: key) }
    }
}

@Suite struct LocalBlobStoreTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("blobs-\(UUID().uuidString)").path

    private func write(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("src-\(UUID().uuidString)").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func temporaryFiles() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: root + "/tmp")) ?? []
    }

    @Test func storesContentOnceUnderItsHash() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let source = try write("hello blobs")
        defer { try? FileManager.default.removeItem(atPath: source) }

        let first = try store.put(contentsOf: source)
        #expect(first.written && first.size == 11)
        #expect(first.hash == ContentHash.of(Array("hello blobs".utf8)))
        #expect(FileManager.default.contents(atPath: store.path(for: first.hash)) == Data("hello blobs".utf8))
        #expect(store.path(for: first.hash).hasSuffix("/sha256/\(first.hash.hex.prefix(2))/\(first.hash.hex.dropFirst(2).prefix(2))/\(first.hash.hex)"))

        let again = try store.put(contentsOf: source)
        #expect(!again.written && again.hash == first.hash)
        #expect(temporaryFiles().isEmpty)
        #expect(try store.verify(first.hash) == 11)
    }

    @Test func verifyFindsCorruptAndMissingBlobs() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let source = try write("precious")
        defer { try? FileManager.default.removeItem(atPath: source) }
        let blob = try store.put(contentsOf: source)

        chmod(store.path(for: blob.hash), 0o644)
        try "tampered".write(toFile: store.path(for: blob.hash), atomically: false, encoding: .utf8)
        #expect(throws: BlobStoreError.self) { try store.verify(blob.hash) }
        try store.remove(blob.hash)
        #expect(try !store.contains(blob.hash))
        do {
            _ = try store.verify(blob.hash)
            Issue.record("verify of a removed blob succeeded")
        } catch BlobStoreError.missing(let hash) {
            #expect(hash == blob.hash)
        }
        try store.remove(blob.hash)  // removing twice is fine
    }

    @Test func unreadableSourceLeavesNothingBehind() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        #expect(throws: BlobStoreError.self) { try store.put(contentsOf: root + "/does-not-exist") }
        // A directory opens but cannot be read.
        #expect(throws: BlobStoreError.self) { try store.put(contentsOf: root) }
        #expect(throws: BlobStoreError.self) { try store.adopt(root + "/tmp/does-not-exist") }
        #expect(temporaryFiles().isEmpty)
    }

    @Test func materializingLinksOrCopiesOnlyVerifiedContent() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let source = try write("a file document")
        defer { try? FileManager.default.removeItem(atPath: source) }
        let blob = try store.put(contentsOf: source)

        // Same file system: a hard link to the read-only blob.
        let linked = root + "/linked"
        try store.materialize(blob.hash, at: linked)
        let attributes = try FileManager.default.attributesOfItem(atPath: linked)
        #expect((attributes[.referenceCount] as? Int) == 2)
        #expect((attributes[.posixPermissions] as? Int) == 0o400)

        // Another file system (tmpfs): a verified copy.
        let elsewhere = "/dev/shm/materialized-\(UUID().uuidString)"
        defer { unlink(elsewhere) }
        try store.materialize(blob.hash, at: elsewhere)
        #expect(FileManager.default.contents(atPath: elsewhere) == Data("a file document".utf8))

        // A corrupt blob is never placed anywhere.
        chmod(store.path(for: blob.hash), 0o644)
        try "tampered".write(toFile: store.path(for: blob.hash), atomically: false, encoding: .utf8)
        let refused = "/dev/shm/refused-\(UUID().uuidString)"
        #expect(throws: BlobStoreError.self) { try store.materialize(blob.hash, at: refused) }
        #expect(!FileManager.default.fileExists(atPath: refused))
    }

    @Test func aStreamedBlobIsStoredUnderTheHashOfWhatWasWrittenOrLeavesNothing() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let content = Secure.randomBytes(300_000)
        let writer = try store.writer()
        for start in stride(from: 0, to: content.count, by: 70_000) {
            try content[start..<min(start + 70_000, content.count)].withUnsafeBytes { try writer.write($0) }
        }
        let blob = try writer.finish()
        #expect(blob.written && blob.size == 300_000 && blob.hash == ContentHash.of(content))
        #expect(try store.verify(blob.hash) == 300_000)
        // The same content again is not written twice; a writer dropped unfinished leaves no scratch file.
        let again = try store.writer()
        try content.withUnsafeBytes { try again.write($0) }
        #expect(!(try again.finish()).written)
        do {
            let abandoned = try store.writer()
            try Array("half".utf8).withUnsafeBytes { try abandoned.write($0) }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.scratchDirectory).isEmpty)
    }

    /// Helper finding: a file planted in the store's `sha256` folder (by a
    /// restore that followed a link, since fixed) made every collection fail
    /// with ENOTDIR. Listing reads only the store's own layout.
    @Test func listingForCollectionReadsOnlyTheStoresLayout() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let blob = try store.adopt({ let path = store.scratchDirectory + "/x"; try Data("kept".utf8).write(to: URL(fileURLWithPath: path)); return path }())
        try Data("stray".utf8).write(to: URL(fileURLWithPath: root + "/sha256/5a5a5a"))
        try FileManager.default.createDirectory(atPath: root + "/sha256/zz-not-ours", withIntermediateDirectories: true)
        #expect(try store.storedHashes(unusedSince: .distantFuture) == [blob.hash])
    }

    @Test func adoptedFilesAreMovedInOnce() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try LocalBlobStore(root: root)
        let dump = store.scratchDirectory + "/dump-1"
        try "a dump".write(toFile: dump, atomically: false, encoding: .utf8)
        let blob = try store.adopt(dump)
        #expect(blob.written && blob.hash == ContentHash.of(Array("a dump".utf8)))
        #expect(!FileManager.default.fileExists(atPath: dump))
        #expect(try store.verify(blob.hash) == 6)

        // The same content again: the store keeps its copy and the new file goes.
        try "a dump".write(toFile: dump, atomically: false, encoding: .utf8)
        #expect(!(try store.adopt(dump)).written)
        #expect(!FileManager.default.fileExists(atPath: dump))
        #expect(temporaryFiles().isEmpty)
    }
}
