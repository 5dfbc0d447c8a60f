import AsyncHTTPClient
import BackupRules
import BackupStorage
import BackupTestSupport
import Foundation
import NIOCore
import Testing

/// The object store's requests against a real S3 server (moto, signatures
/// checked): what is put is read back whole and by range, listed, found
/// and removed; a wrong secret or an unknown key is refused, and no
/// refusal or error says a secret or a signature. (moto takes a PUT whose
/// body does not match its `x-amz-checksum-sha256`, which S3 refuses: a
/// blob store's reads check the content hash themselves.)
@Suite struct ObjectStoreClientTests {
    /// A client of a new bucket of its own, path-style, as moto takes it. The
    /// key prefix has no slash: moto checks the signature of a query value
    /// holding one (a listing's `prefix=a/`) wrongly, botocore's own too.
    private func withBucket(_ credentials: ((MotoServer) -> ObjectStoreCredentials)? = nil,
                            _ body: (ObjectStoreClient, MotoServer) async throws -> Void) async throws {
        let moto = try await MotoServer.shared
        let location = ObjectStoreLocation(endpoint: moto.endpoint, bucket: "test-\(UUID().uuidString.prefix(8).lowercased())",
                                           prefix: "backupd-", region: moto.region, pathStyle: true)
        let owner = try ObjectStoreClient(location: location, credentials: moto.credentials, http: .shared)
        try await owner.createBucket()
        try await body(try credentials.map { try ObjectStoreClient(location: location, credentials: $0(moto), http: .shared) } ?? owner, moto)
    }

    @Test func whatIsPutIsReadWholeAndByRangeListedAndRemoved() async throws {
        try await withBucket { store, _ in
            let content = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            // moto checks signatures of keys with + = & % ! ( ) or non-ASCII letters wrongly (botocore's own fail there
            // too); SignatureV4Tests checks those against botocore. backupd's keys are hex digits, dashes and slashes.
            let keys = ["blobs/ab/cd/abcdef", "odd/a key with spaces~tilde-dash_under.score", "empty"]
            for key in keys {
                let bytes = key == "empty" ? [] : content
                try await store.put(key, ByteBuffer(bytes: bytes), sha256: ContentHash.of(bytes))
                let size = try await store.size(of: key)
                #expect(size == UInt64(bytes.count))
            }
            var read: [UInt8] = []
            #expect(try await store.get(keys[1]) { read += Array(buffer: $0) })
            #expect(read == content)
            read = []
            #expect(try await store.get(keys[0], range: 1000...1999) { read += Array(buffer: $0) })
            #expect(read == Array(content[1000...1999]))
            let all = try await store.list(prefix: ""), blobs = try await store.list(prefix: "blobs")
            #expect(all.map(\.key).sorted() == keys.sorted())
            #expect(blobs.map(\.size) == [UInt64(content.count)])
            try await store.delete(keys[0])
            try await store.delete(keys[0])  // gone already: still fine
            let gone = try await store.size(of: keys[0])
            #expect(gone == nil)
            #expect(try await !store.get(keys[0]) { _ in })
        }
    }

    @Test func aWrongSecretOrAnUnknownKeyIsRefusedAndNeitherSecretNorSignatureIsSaid() async throws {
        let wrongSecret: (MotoServer) -> ObjectStoreCredentials = {
            ObjectStoreCredentials(accessKeyID: $0.credentials.accessKeyID, secretAccessKey: "not-the-secret-at-all")
        }
        let unknownKey: (MotoServer) -> ObjectStoreCredentials = { _ in
            ObjectStoreCredentials(accessKeyID: "AKIAUNKNOWN000000000", secretAccessKey: "not-the-secret-at-all")
        }
        for credentials in [wrongSecret, unknownKey] {
            try await withBucket(credentials) { store, moto in
                let refused = await #expect(throws: ObjectStoreError.self) {
                    try await store.put("x", ByteBuffer(bytes: [1]), sha256: ContentHash.of([1]))
                }
                #expect(refused?.status == 403, "\(String(describing: refused))")
                let text = "\(String(describing: refused))"
                #expect(!text.contains("not-the-secret") && !text.contains(moto.credentials.secretAccessKey.revealed))
                #expect(!text.contains("Signature=") && !text.contains("X-Amz-Signature"))
            }
        }
    }

    @Test func anUnreachableStoreIsNamedAsSuch() async throws {
        // A port nothing listens on: the connection is refused.
        let location = ObjectStoreLocation(endpoint: "http://127.0.0.1:9", bucket: "none", region: "us-east-1", pathStyle: true)
        var store = try ObjectStoreClient(location: location, credentials: ObjectStoreCredentials(accessKeyID: "a", secretAccessKey: "s"), http: .shared)
        // async-http-client tries to connect again until the request's time is up.
        store.requestTimeout = .milliseconds(500)
        let failed = await #expect(throws: ObjectStoreError.self) { _ = try await store.size(of: "x") }
        guard case .unreachable(let operation, _) = failed else {
            Issue.record("\(String(describing: failed))")
            return
        }
        #expect(operation == "looking for x")
    }

    @Test func anEndpointThatIsNotAnHTTPURLIsRefusedAtOnce() {
        for endpoint in ["ftp://127.0.0.1:21", "127.0.0.1:9000", "http://"] {
            let location = ObjectStoreLocation(endpoint: endpoint, bucket: "b", region: "us-east-1", pathStyle: true)
            #expect(throws: ObjectStoreError.self, "\(endpoint)") {
                _ = try ObjectStoreClient(location: location, credentials: ObjectStoreCredentials(accessKeyID: "a", secretAccessKey: "s"), http: .shared)
            }
        }
    }
}
