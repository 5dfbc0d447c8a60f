import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import NIOCore
import Testing

/// What every blob store promises, on the local folder and on an S3 store
/// (moto, signatures checked): content stored once under its hash whichever
/// way it arrives (streamed, from a file, adopted; small, or in parts),
/// read back checked, corruption and absence named, removal in batches,
/// listing for collection, and what unfinished writes leave dropped. The
/// store's calls block, so each runs on a thread of its own (`onThread`).
@Suite struct BlobStoreContractTests {
    /// 12 MiB and a bit: three 5 MiB parts on the object store.
    static let large = 12 << 20 | 12_345

    private func withStore(_ kind: BlobStoreKind, _ body: (any BlobStore, String) async throws -> Void) async throws {
        try await withStorage(kind) { storage, scratch in try await body(try storage.open(), scratch) }
    }

    private func withStorage(_ kind: BlobStoreKind, _ body: (TestStorage, String) async throws -> Void) async throws {
        let scratch = try ScratchDirectory("store-\(kind)")
        defer { scratch.remove() }
        try await body(try await TestStorage.make(kind, directory: scratch.path + "/blobs"), scratch.path)
    }

    private static func file(_ bytes: [UInt8], in folder: String) throws -> String {
        let path = "\(folder)/source-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    private static func stream(_ content: [UInt8], into store: any BlobStore) async throws -> StoredBlob {
        try await onThread {
            let writer = try store.writer()
            for start in stride(from: 0, to: content.count, by: 700_000) {
                try content[start..<min(start + 700_000, content.count)].withUnsafeBytes { try writer.write($0) }
            }
            return try writer.finish()
        }
    }

    private static func readAll(_ store: any BlobStore, _ hash: ContentHash) async throws -> [UInt8] {
        try await onThread {
            var bytes: [UInt8] = []
            _ = try store.read(hash, interruption: nil) { bytes += $0 }
            return bytes
        }
    }

    @Test(arguments: BlobStoreKind.allCases)
    func contentIsStoredOnceUnderItsHashHoweverItArrives(_ kind: BlobStoreKind) async throws {
        try await withStore(kind) { store, scratch in
            let small = Array("a small document".utf8), large = Secure.randomBytes(Self.large), empty: [UInt8] = []
            var stored: [ContentHash] = []
            for content in [small, large, empty] {
                let blob = try await Self.stream(content, into: store)
                #expect(blob.written && blob.hash == ContentHash.of(content) && blob.size == UInt64(content.count))
                #expect(try await Self.readAll(store, blob.hash) == content)
                stored.append(blob.hash)
            }
            // From a file (no further than `upTo`), and adopted: content the store holds is not written again.
            let other = Secure.randomBytes(Self.large), longer = try Self.file(other + [1, 2, 3], in: scratch)
            let fromFile = try await onThread { try store.put(reading: LocalFile.open(longer), upTo: UInt64(other.count), interruption: nil) }
            #expect(fromFile.written && fromFile.hash == ContentHash.of(other))
            #expect(try await Self.readAll(store, fromFile.hash) == other)
            let adopted = try Self.file(large, in: scratch), again = try Self.file(small, in: scratch)
            #expect(try await onThread { try !store.adopt(adopted).written })
            #expect(!FileManager.default.fileExists(atPath: adopted))
            #expect(try await onThread { try !store.put(contentsOf: again).written })
            #expect(Set(try await onThread { try store.storedHashes(unusedSince: .distantFuture) }) == Set(stored + [fromFile.hash]))
            #expect(try await onThread { try store.storedHashes(unusedSince: .distantPast) }.isEmpty)
            let all = stored
            #expect(try await onThread { try all.allSatisfy { try store.contains($0) } })
            // Nothing staged is left behind.
            #expect(try FileSystem.names(in: scratch + "/blobs/tmp").isEmpty)
        }
    }

    @Test(arguments: BlobStoreKind.allCases)
    func corruptAndMissingBlobsAreNamedAndRemovalGoesInBatches(_ kind: BlobStoreKind) async throws {
        try await withStorage(kind) { storage, _ in
            let store = try storage.open()
            var blobs: [ContentHash] = []
            for index in 0..<5 { blobs.append(try await Self.stream(Array("document \(index)".utf8), into: store).hash) }
            try await storage.replaceContent(of: blobs[0], with: Array("tampered".utf8))
            let tampered = blobs[0]
            await #expect {
                try await onThread { try store.verify(tampered) }
            } throws: { error in
                guard case let BlobStoreError.corrupt(hash, actual) = error else { return false }
                return hash == tampered && actual == ContentHash.of(Array("tampered".utf8))
            }
            let toRemove = blobs
            let (removed, failure) = try await onThread { store.remove(all: toRemove) }
            #expect(removed == blobs && failure == nil)
            #expect(try await onThread { try store.storedHashes(unusedSince: .distantFuture) }.isEmpty)
            let gone = blobs[1]
            #expect(try await onThread { try !store.contains(gone) })
            await #expect {
                try await onThread { try store.verify(gone) }
            } throws: { error in
                guard case let BlobStoreError.missing(hash) = error else { return false }
                return hash == gone
            }
            try await onThread { try store.remove(gone) }  // gone already: fine
        }
    }

    /// Ranges and sizes of a blob (a prepared archive served to a client),
    /// a file adopted under the hash its writer computed, and blobs read as
    /// one stream (an upload's segments), each checked at its end: a
    /// tampered one is named, not passed on.
    @Test(arguments: BlobStoreKind.allCases)
    func rangesSizesAndBlobsReadOneAfterAnother(_ kind: BlobStoreKind) async throws {
        try await withStorage(kind) { storage, scratch in
            let store = try storage.open()
            let large = Secure.randomBytes(Self.large), small = Array("the second segment".utf8)
            let path = try Self.file(large, in: scratch)
            let first = try await onThread { try store.adopt(path, as: StoredBlob(hash: ContentHash.of(large), size: UInt64(large.count))) }
            #expect(first.written && !FileManager.default.fileExists(atPath: path))
            let second = try await Self.stream(small, into: store)
            #expect(try await onThread { try store.size(of: first.hash) } == UInt64(large.count))
            #expect(try await onThread { try store.size(of: ContentHash.of(Array("absent".utf8))) } == nil)
            let range = try await onThread { try store.read(first.hash, at: 5 << 20 | 3, length: 1 << 20) }
            #expect(Array(range.readableBytesView) == Array(large[(5 << 20 | 3)..<(6 << 20 | 3)]))
            let end = try await onThread { try store.read(second.hash, at: 4, length: 1000) }
            #expect(Array(end.readableBytesView) == Array(small[4...]))

            let segments = [first, second]
            let joined = try await onThread {
                var bytes: [UInt8] = []
                try ConcatenatedBlobs(segments, in: store).forEachChunk { bytes += $0 }
                return bytes
            }
            #expect(joined == large + small)
            var tampered = small
            tampered[0] ^= 1
            try await storage.replaceContent(of: second.hash, with: tampered)
            await #expect {
                try await onThread { try ConcatenatedBlobs(segments, in: store).forEachChunk { _ in } }
            } throws: { error in
                guard case let BlobStoreError.corrupt(hash, actual) = error else { return false }
                return hash == second.hash && actual == ContentHash.of(tampered)
            }
        }
    }

    /// What a process that died mid-upload left (its uploads never
    /// completed) is aborted by a collection. (moto dates every unfinished
    /// upload 2010, so the age check itself cannot be shown on it.)
    @Test func unfinishedUploadsAreDroppedByACollection() async throws {
        try await withStore(.objectStore) { store, _ in
            let object = try #require(store as? ObjectBlobStore)
            _ = try await object.client.startUpload(object.key(ContentHash.of(Array("never finished".utf8))))
            #expect(try await onThread { try store.dropAbandonedWrites(startedBefore: Date().addingTimeInterval(3600)) } == 1)
            #expect(try await onThread { try store.dropAbandonedWrites(startedBefore: Date().addingTimeInterval(3600)) } == 0)
        }
    }

    /// A multipart upload that fails after some parts were sent leaves no
    /// object under its key and no parts in the store; a collection running
    /// while one is under way never aborts it.
    @Test func aMultipartUploadThatFailsLeavesNothingAndOneUnderWayIsNotTakenForAbandoned() async throws {
        try await withStore(.objectStore) { store, _ in
            let object = try #require(store as? ObjectBlobStore)
            let content = Secure.randomBytes(Self.large), hash = ContentHash.of(content)
            struct SourceBroke: Error {}
            let failed = try await onThread { () -> Bool in
                do {
                    try object.send(hash, size: UInt64(content.count)) { upload in
                        try content[0..<(11 << 20)].withUnsafeBytes { try upload.write($0) }
                        throw SourceBroke()
                    }
                    return false
                } catch is SourceBroke { return true }
            }
            #expect(failed)
            #expect(try await onThread { try !store.contains(hash) })
            #expect(try await object.client.unfinishedUploads(prefix: "").isEmpty)

            let dropped = try await onThread { () -> Int in
                var dropped = 0
                try object.send(hash, size: UInt64(content.count)) { upload in
                    try content[0..<(11 << 20)].withUnsafeBytes { try upload.write($0) }
                    dropped = try store.dropAbandonedWrites(startedBefore: .distantFuture)
                    try content[(11 << 20)...].withUnsafeBytes { try upload.write($0) }
                }
                return dropped
            }
            #expect(dropped == 0)
            #expect(try await Self.readAll(store, hash) == content)
        }
    }
}
