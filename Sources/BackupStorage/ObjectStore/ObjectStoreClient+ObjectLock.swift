import AsyncHTTPClient
import BackupRules
import Foundation
import NIOCore

/// How S3 object lock keeps a version of an object: in governance mode a
/// user with the bypass permission may still delete it; in compliance mode
/// nobody can, the bucket's owner included, until its date.
public enum ObjectLockMode: String, Sendable, CaseIterable {
    case governance = "GOVERNANCE"
    case compliance = "COMPLIANCE"
}

/// A version of an object, or a delete marker, that a versioned bucket keeps.
public struct ObjectVersion: Sendable, Equatable {
    public let key: String
    public let id: String
    public let isDeleteMarker: Bool
}

/// S3 object lock (which needs a bucket made with it, and so versioned):
/// a retain-until date per version, which neither backupd nor anyone with
/// its credentials can shorten in compliance mode; deleting a key then only
/// hides it behind a delete marker, and only deleting its versions frees
/// the space, which the store refuses for a version still retained.
extension ObjectStoreClient {
    /// Whether the bucket was made with object lock enabled.
    public func objectLockEnabled() async throws(ObjectStoreError) -> Bool {
        let operation = "reading the object lock configuration of bucket \(location.bucket)"
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("GET", key: nil, query: [("object-lock", "")], operation: operation)
            switch response.status {
            case .ok:
                let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 1 << 20, operation: operation)),
                                       wanted: ["ObjectLockEnabled"])
                return fields.first["ObjectLockEnabled"] == "Enabled"
            case .notFound:
                return false
            default:
                throw await Self.refusal(response, operation: operation)
            }
        }
    }

    /// Keeps the current version of `key` from deletion until `date`
    /// (PutObjectRetention). A date earlier than the one it has is refused by
    /// the store in compliance mode, as is any change of mode.
    public func retain(_ key: String, until date: Date, mode: ObjectLockMode) async throws(ObjectStoreError) {
        let operation = "retaining \(key)"
        let body = "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>\(mode.rawValue)</Mode>"
            + "<RetainUntilDate>\(S3Dates.format(date))</RetainUntilDate></Retention>"
        let bytes = Array(body.utf8), hash = ContentHash.of(bytes)
        try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("PUT", key: key, query: [("retention", "")],
                                          headers: [("Content-Length", "\(bytes.count)"), ("x-amz-sdk-checksum-algorithm", "SHA256"),
                                                    ("x-amz-checksum-sha256", Data(hash.digest).base64EncodedString())],
                                          body: ByteBuffer(bytes: bytes), payloadHash: hash.hex, operation: operation)
            guard response.status == .ok || response.status == .noContent else { throw await Self.refusal(response, operation: operation) }
        }
    }

    /// The retention of the current version of `key`, from its HEAD (which
    /// answers it to a caller allowed to read retentions); nil when it has none.
    public func retention(of key: String) async throws(ObjectStoreError) -> (mode: ObjectLockMode, until: Date)? {
        let operation = "reading the retention of \(key)"
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("HEAD", key: key, operation: operation)
            switch response.status {
            case .ok:
                guard let mode = response.headers.first(name: "x-amz-object-lock-mode").flatMap(ObjectLockMode.init(rawValue:)),
                      let until = response.headers.first(name: "x-amz-object-lock-retain-until-date") else { return nil }
                return (mode, S3Dates.parse(until))
            case .notFound:
                return nil
            default:
                throw await Self.refusal(response, operation: operation)
            }
        }
    }

    /// Every version and delete marker of the objects whose key starts with `prefix`.
    public func versions(prefix: String) async throws(ObjectStoreError) -> [ObjectVersion] {
        var versions: [ObjectVersion] = []
        var marker: (key: String, version: String)?
        repeat {
            let operation = "listing the versions of \(prefix.isEmpty ? "the store" : prefix)"
            var query = [("versions", ""), ("prefix", location.prefix + prefix)]
            if let marker { query += [("key-marker", marker.key), ("version-id-marker", marker.version)] }
            let fields = try await retrying(operation) { () throws(ObjectStoreError) in
                let response = try await send("GET", key: nil, query: query, operation: operation)
                guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
                let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 8 << 20, operation: operation)),
                                       wanted: ["Key", "VersionId", "IsTruncated", "NextKeyMarker", "NextVersionIdMarker"],
                                       record: ["Version", "DeleteMarker"])
                guard fields.parsed, fields.root == "ListVersionsResult" else {
                    throw .unexpected(operation: operation, reason: "the listing is not S3's XML")
                }
                return fields
            }
            versions += fields.records.compactMap { record in
                guard let key = record["Key"], key.hasPrefix(location.prefix), let id = record["VersionId"] else { return nil }
                return ObjectVersion(key: String(key.dropFirst(location.prefix.count)), id: id,
                                     isDeleteMarker: record[XMLFields.recordName] == "DeleteMarker")
            }
            marker = fields.first["IsTruncated"] == "true"
                ? fields.first["NextKeyMarker"].map { ($0, fields.first["NextVersionIdMarker"] ?? "") } : nil
        } while marker != nil
        return versions
    }
}
