import AsyncHTTPClient
import BackupStorage
import Foundation
import NIOPosix

/// The blob stores tests run on: the local folder, and an S3-compatible
/// object store (moto on loopback, signatures checked). Tests that hold for
/// every store take both as arguments; tests of a running server take the
/// one `BACKUPD_TEST_BLOB_STORE` names (`local`, the default, or `s3`), so
/// the same tests run on either store by configuration alone.
public enum BlobStoreKind: String, CaseIterable, Sendable, CustomStringConvertible {
    case localFolder = "local"
    case objectStore = "s3"

    public var description: String { rawValue }

    /// The store `BACKUPD_TEST_BLOB_STORE` names.
    public static var configured: BlobStoreKind {
        ProcessInfo.processInfo.environment["BACKUPD_TEST_BLOB_STORE"].flatMap(BlobStoreKind.init(rawValue:)) ?? .localFolder
    }

    /// A new, empty store of this kind: a folder under `scratch`, or a new
    /// bucket of the test process's moto (whose streamed writes stage under
    /// `scratch`). Parts of 5 MiB, the least S3 takes, so that tests of a few
    /// mebibytes go through multipart uploads.
    public func makeStore(scratch: String) async throws -> any BlobStore {
        switch self {
        case .localFolder:
            return try LocalBlobStore(root: scratch + "/blobs")
        case .objectStore:
            let client = try await Self.newBucket()
            return try ObjectBlobStore(client: client, scratchDirectory: scratch + "/staging", partSize: 5 << 20, partsInFlight: 2)
        }
    }

    /// A client of a new bucket of moto's, its keys under `backupd-` (moto
    /// checks the signature of a listing whose prefix holds a slash wrongly).
    public static func newBucket() async throws -> ObjectStoreClient {
        let moto = try await MotoServer.shared
        let location = ObjectStoreLocation(endpoint: moto.endpoint, bucket: "test-\(UUID().uuidString.prefix(13).lowercased())",
                                           prefix: "backupd-", region: moto.region, pathStyle: true)
        let client = try ObjectStoreClient(location: location, credentials: moto.credentials, http: .shared)
        try await client.createBucket()
        return client
    }
}

/// Runs blocking work (a blob store's calls) on a thread of its own rather
/// than on one of the few that run tasks.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await NIOThreadPool.singleton.runIfActive(body)
}
