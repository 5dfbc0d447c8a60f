import BackupRules
import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// The object store through a store that misbehaves (`FaultyStoreProxy`
/// between backupd and moto): answers 503 SlowDown, resets connections and
/// stalls past the request timeout on a share of requests. Blobs are still
/// stored and read whole, by retries; a store that refuses every request
/// fails the write naming what it said, and leaves nothing, and is never
/// taken to hold no blob when it could not be asked.
@Suite struct ObjectStoreFaultTests {
    /// The bucket's objects through `proxy`: two-second requests, eight tries a few milliseconds apart.
    private static func store(_ bucket: ObjectStoreClient, through proxy: FaultyStoreProxy, scratch: String) async throws -> ObjectBlobStore {
        var location = bucket.location
        location.endpoint = proxy.endpoint
        var client = try ObjectStoreClient(location: location, credentials: try await MotoServer.shared.credentials, http: .shared)
        client.requestTimeout = .seconds(2)
        client.retries = RetryPolicy(attempts: 8, base: .milliseconds(20), cap: .milliseconds(200))
        return try ObjectBlobStore(client: client, scratchDirectory: scratch, partSize: TestStorage.partSize, partsInFlight: 2)
    }

    @Test func blobsAreStoredAndReadThroughAStoreThatIsBusyResetsAndStalls() async throws {
        let scratch = try ScratchDirectory("faulty")
        defer { scratch.remove() }
        let bucket = try await BlobStoreKind.newBucket()
        let proxy = try FaultyStoreProxy(upstream: bucket.location.endpoint, slowDown: 0.2, reset: 0.1, stall: 0.04, stallSeconds: 3)
        defer { proxy.stop() }
        let store = try await Self.store(bucket, through: proxy, scratch: scratch.path)
        let contents = (0..<12).map { Secure.randomBytes($0 < 2 ? 12 << 20 : 50_000 + $0) }
        let written = try await onThread {
            try contents.map { content in
                let writer = try store.writer()
                try content.withUnsafeBytes { try writer.write($0) }
                return try writer.finish()
            }
        }
        #expect(written.map(\.hash) == contents.map { ContentHash.of($0) })
        for (blob, content) in zip(written, contents) {
            let read = try await onThread {
                var bytes: [UInt8] = []
                _ = try store.read(blob.hash, interruption: nil) { bytes += $0 }
                return bytes
            }
            #expect(read == content)
        }
        #expect(Set(try await onThread { try store.storedHashes(unusedSince: .distantFuture) }) == Set(written.map(\.hash)))
        let hashes = written.map(\.hash)
        let (removed, failure) = try await onThread { store.remove(all: hashes) }
        #expect(failure == nil && removed == hashes)
        #expect(try await bucket.list(prefix: "").isEmpty)
        let counts = proxy.counts
        #expect(counts.slowDown > 0 && counts.reset > 0 && counts.stalled > 0 && counts.passed > 0, "\(counts)")
    }

    @Test func aStoreThatRefusesEveryRequestFailsTheWriteNamingItAndLeavesNothing() async throws {
        let scratch = try ScratchDirectory("refusing")
        defer { scratch.remove() }
        let bucket = try await BlobStoreKind.newBucket()
        let proxy = try FaultyStoreProxy(upstream: bucket.location.endpoint, slowDown: 1, reset: 0, stall: 0)
        defer { proxy.stop() }
        let store = try await Self.store(bucket, through: proxy, scratch: scratch.path)
        for size in [1000, 12 << 20] {
            let content = Secure.randomBytes(size)
            let failure = await #expect(throws: ObjectStoreError.self) {
                try await onThread {
                    let writer = try store.writer()
                    try content.withUnsafeBytes { try writer.write($0) }
                    _ = try writer.finish()
                }
            }
            let said = failure.map { "\($0)" } ?? ""
            #expect(said.contains("503") && said.contains("SlowDown") && said.contains("sha256-"), "\(said)")
        }
        // Asked whether it holds a blob, it says why it cannot answer rather than "no".
        let unknown = ContentHash.of(Array("anything".utf8))
        await #expect(throws: ObjectStoreError.self) { try await onThread { try store.contains(unknown) } }
        #expect(proxy.counts.slowDown >= 16 && proxy.counts.passed == 0)
        #expect(try await bucket.list(prefix: "").isEmpty)
        #expect(try await bucket.unfinishedUploads(prefix: "").isEmpty)
        #expect(try FileSystem.names(in: scratch.path).isEmpty)
    }
}
