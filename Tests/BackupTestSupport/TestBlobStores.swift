import AsyncHTTPClient
import BackupRules
import BackupStorage
import Foundation
import NIOCore
import NIOPosix

/// The blob stores tests run on: the local folder, and an S3-compatible
/// object store (moto on loopback, signatures checked). Tests that hold for
/// every store take both as arguments; tests of a running server take the
/// one `BACKUPD_TEST_BLOB_STORE` names (`local`, the default, or `s3`), so
/// the same tests run on either store by configuration alone (`TestStorage`).
public enum BlobStoreKind: String, CaseIterable, Sendable, CustomStringConvertible {
    case localFolder = "local"
    case objectStore = "s3"

    public var description: String { rawValue }

    /// The store `BACKUPD_TEST_BLOB_STORE` names.
    public static var configured: BlobStoreKind {
        ProcessInfo.processInfo.environment["BACKUPD_TEST_BLOB_STORE"].flatMap(BlobStoreKind.init(rawValue:)) ?? .localFolder
    }

    /// A client of a new bucket of moto's, its keys under `backupd-` (moto
    /// checks the signature of a listing whose prefix holds a slash wrongly).
    public static func newBucket(objectLock: Bool = false) async throws -> ObjectStoreClient {
        let moto = try await MotoServer.shared
        let location = ObjectStoreLocation(endpoint: moto.endpoint, bucket: "test-\(UUID().uuidString.prefix(13).lowercased())",
                                           prefix: "backupd-", region: moto.region, pathStyle: true)
        let client = try ObjectStoreClient(location: location, credentials: moto.credentials, http: .shared)
        try await client.createBucket(objectLock: objectLock)
        return client
    }
}

/// Where a test server keeps its blobs: its work folder (`--blob-dir`),
/// which for the local folder is the store too, and for the object store a
/// new bucket of moto's. A restarted server, or a second process on the
/// same catalog, is given the same storage.
public struct TestStorage: Sendable {
    public let kind: BlobStoreKind
    public let directory: String
    /// The bucket, for the object store.
    public let bucket: ObjectStoreClient?
    /// Parts of 5 MiB, the least S3 takes, so that blobs of a few mebibytes go in parts.
    public static let partSize = 5 << 20

    /// New storage of `kind` with its work folder at `directory`.
    public static func make(_ kind: BlobStoreKind = .configured, directory: String, objectLock: Bool = false) async throws -> TestStorage {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return TestStorage(kind: kind, directory: directory,
                           bucket: kind == .objectStore ? try await BlobStoreKind.newBucket(objectLock: objectLock) : nil)
    }

    /// The same store for a second process with a work folder of its own at
    /// `directory`: on the object store, the same bucket; the local folder
    /// is both, so it is shared whole.
    public func shared(workFolder directory: String) throws -> TestStorage {
        guard bucket != nil else { return self }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return TestStorage(kind: kind, directory: directory, bucket: bucket)
    }

    /// The same bucket reached through another endpoint (a proxy to it).
    public func reached(through endpoint: String) async throws -> TestStorage {
        guard let bucket else { return self }
        var location = bucket.location
        location.endpoint = endpoint
        return TestStorage(kind: kind, directory: directory,
                           bucket: try ObjectStoreClient(location: location, credentials: try await MotoServer.shared.credentials, http: .shared))
    }

    /// The store, as backupd opens it.
    public func open() throws -> any BlobStore {
        guard let bucket else { return try LocalBlobStore(root: directory) }
        return try ObjectBlobStore(client: bucket, scratchDirectory: scratchDirectory, partSize: Self.partSize, partsInFlight: 2)
    }

    /// Puts other bytes in place of a blob's content, as a failing disk or
    /// a hand in the bucket would.
    public func replaceContent(of hash: ContentHash, with bytes: [UInt8]) async throws {
        switch try open() {
        case let object as ObjectBlobStore:
            try await object.client.put(object.key(hash), ByteBuffer(bytes: bytes), sha256: ContentHash.of(bytes))
        case let local as LocalBlobStore:
            let path = local.path(for: hash)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            chmod(path, 0o600)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
        default:
            throw TestSupportError("a store the tests do not know")
        }
    }

    /// Where the store's writes are staged before they are in the store:
    /// the work folder's scratch, as in backupd.
    public var scratchDirectory: String { directory + "/tmp" }

    /// What a backupd process is started with to use this storage: its
    /// environment (credentials there, never on the command line) and options.
    public func processSettings() async throws -> (environment: [String: String], arguments: [String]) {
        guard let bucket else { return (["BACKUPD_BLOB_DIR": directory], []) }
        let location = bucket.location, credentials = try await MotoServer.shared.credentials
        return (["BACKUPD_BLOB_DIR": directory, "BACKUPD_BLOB_STORE": "s3://\(location.bucket)/\(location.prefix)",
                 "BACKUPD_S3_ENDPOINT": location.endpoint, "BACKUPD_S3_REGION": location.region,
                 "AWS_ACCESS_KEY_ID": credentials.accessKeyID, "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey.revealed],
                ["--s3-path-style", "--s3-part-size-mib", "\(Self.partSize >> 20)"])
    }
}

/// Runs blocking work (a blob store's calls) on a thread of its own rather
/// than on one of the few that run tasks.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await NIOThreadPool.singleton.runIfActive(body)
}

extension BackupTestServer {
    /// A blob's content, read (and checked) through its store.
    public func storedContent(_ hash: ContentHash) async throws -> [UInt8] {
        let store = try storage.open()
        return try await onThread {
            var bytes: [UInt8] = []
            _ = try store.read(hash, interruption: nil) { bytes += $0 }
            return bytes
        }
    }

    /// Changes a blob's content in its store, as a failing disk or a hand
    /// in the bucket would (a flipped byte, a cut).
    public func damage(_ hash: ContentHash, _ change: (inout [UInt8]) -> Void) async throws {
        var bytes = try await storedContent(hash)
        change(&bytes)
        try await storage.replaceContent(of: hash, with: bytes)
    }

    /// Removes a blob from its store behind the catalog's back.
    public func removeBlob(_ hash: ContentHash) async throws {
        let store = try storage.open()
        try await onThread { try store.remove(hash) }
    }

    /// The bytes of every object the store keeps, by the name it keeps it
    /// under, as they are (encrypted or not); for the local folder, every
    /// other file under the server's work folder too (scratch, uploads,
    /// archives), named by its path.
    public func everythingStored() async throws -> [String: [UInt8]] {
        let store = try storage.open()
        var found: [String: [UInt8]] = try await onThread {
            var objects: [String: [UInt8]] = [:]
            for name in try store.storedHashes(unusedSince: .distantFuture) {
                var bytes: [UInt8] = []
                _ = try store.readObject(name, interruption: nil) { bytes += $0 }
                objects[name.hex] = bytes
            }
            return objects
        }
        if storage.bucket == nil, let walker = FileManager.default.enumerator(atPath: storage.directory) {
            while let path = walker.nextObject() as? String {
                let full = storage.directory + "/" + path
                guard (try? FileManager.default.attributesOfItem(atPath: full)[.type] as? FileAttributeType) == .typeRegular,
                      let data = FileManager.default.contents(atPath: full) else { continue }
                found[full] = Array(data)
            }
        }
        return found
    }

    /// The bytes kept under `name`, as they are.
    public func storedObject(_ name: ContentHash) async throws -> [UInt8] {
        let store = try storage.open()
        return try await onThread {
            var bytes: [UInt8] = []
            _ = try store.readObject(name, interruption: nil) { bytes += $0 }
            return bytes
        }
    }

    /// The blobs its store holds.
    public func storedBlobs() async throws -> Set<ContentHash> {
        let store = try storage.open()
        return Set(try await onThread { try store.storedHashes(unusedSince: .distantFuture) })
    }
}
