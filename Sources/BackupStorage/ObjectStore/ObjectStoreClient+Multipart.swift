import AsyncHTTPClient
import BackupRules
import Foundation
import NIOCore

/// An object stored as parts: started, given its parts (in any order, several
/// at once), then completed into one object, or aborted. Until completed,
/// nothing is under its key.
public struct MultipartUpload: Sendable, Equatable {
    public let key: String
    public let id: String
}

/// A part the store holds, as the completion names it.
public struct UploadedPart: Sendable, Equatable {
    public let number: Int
    public let etag: String
}

extension ObjectStoreClient {
    /// Starts an object to be sent in parts. A try again after a lost
    /// answer may leave the first upload started and unused: collections
    /// abort such uploads.
    public func startUpload(_ key: String) async throws(ObjectStoreError) -> MultipartUpload {
        let operation = "starting the upload of \(key)"
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("POST", key: key, query: [("uploads", "")], operation: operation)
            guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
            let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 1 << 20, operation: operation)), wanted: ["UploadId"])
            guard let id = fields.first["UploadId"], !id.isEmpty else { throw .unexpected(operation: operation, reason: "no UploadId") }
            return MultipartUpload(key: key, id: id)
        }
    }

    /// Sends part `number` (from 1) of an upload, signed with its SHA-256,
    /// which the store checks against what it received.
    public func uploadPart(_ upload: MultipartUpload, number: Int, _ bytes: ByteBuffer) async throws(ObjectStoreError) -> UploadedPart {
        let operation = "storing part \(number) of \(upload.key)"
        let hash = ContentHash.of(bytes.readableBytesView)
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("PUT", key: upload.key, query: [("partNumber", "\(number)"), ("uploadId", upload.id)],
                                          headers: [("Content-Length", "\(bytes.readableBytes)")], body: bytes, payloadHash: hash.hex,
                                          operation: operation)
            guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
            guard let etag = response.headers.first(name: "ETag") else { throw .unexpected(operation: operation, reason: "no ETag") }
            return UploadedPart(number: number, etag: etag)
        }
    }

    /// Joins the parts into the object, which then has `size` bytes. A try
    /// again after a lost answer finds the upload gone and the object there.
    public func completeUpload(_ upload: MultipartUpload, parts: [UploadedPart], size: UInt64) async throws(ObjectStoreError) {
        let operation = "completing the upload of \(upload.key)"
        let body = "<CompleteMultipartUpload>" + parts.sorted { $0.number < $1.number }.map {
            "<Part><PartNumber>\($0.number)</PartNumber><ETag>\(Self.xmlEscaped($0.etag))</ETag></Part>"
        }.joined() + "</CompleteMultipartUpload>"
        let bytes = Array(body.utf8)
        var tried = false
        try await retrying(operation) { () throws(ObjectStoreError) in
            defer { tried = true }
            let response = try await send("POST", key: upload.key, query: [("uploadId", upload.id)], headers: [("Content-Length", "\(bytes.count)")],
                                          body: ByteBuffer(bytes: bytes), payloadHash: ContentHash.of(bytes).hex, operation: operation)
            if response.status == .notFound, tried, try await self.size(of: upload.key) == size { return }
            guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
            // S3 may answer 200 and say in the body that completing failed.
            let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 1 << 20, operation: operation)), wanted: ["Code", "Message"])
            if fields.root == "Error" {
                throw .refused(operation: operation, status: 200, code: fields.first["Code"] ?? "", message: fields.first["Message"] ?? "")
            }
        }
        guard let stored = try await self.size(of: upload.key), stored == size else {
            throw .unexpected(operation: operation, reason: "the object completed does not have the \(size) bytes sent")
        }
    }

    /// Drops an upload and the parts the store holds of it; one already gone counts as dropped.
    public func abortUpload(_ upload: MultipartUpload) async throws(ObjectStoreError) {
        let operation = "aborting the upload of \(upload.key)"
        try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("DELETE", key: upload.key, query: [("uploadId", upload.id)], operation: operation)
            guard [.noContent, .ok, .notFound].contains(response.status) else { throw await Self.refusal(response, operation: operation) }
        }
    }

    /// The uploads started under keys beginning with `prefix` and never
    /// completed or aborted, with when each started.
    public func unfinishedUploads(prefix: String) async throws(ObjectStoreError) -> [(upload: MultipartUpload, started: Date)] {
        let operation = "listing the unfinished uploads"
        var found: [(upload: MultipartUpload, started: Date)] = []
        var markers: (key: String, id: String)?
        repeat {
            var query = [("prefix", location.prefix + prefix), ("uploads", "")]
            if let markers { query += [("key-marker", markers.key), ("upload-id-marker", markers.id)] }
            let page = try await retrying(operation) { () throws(ObjectStoreError) in
                let response = try await send("GET", key: nil, query: query, operation: operation)
                guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
                let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 4 << 20, operation: operation)),
                                       wanted: ["Key", "UploadId", "Initiated", "IsTruncated", "NextKeyMarker", "NextUploadIdMarker"], record: ["Upload"])
                guard fields.parsed, fields.root == "ListMultipartUploadsResult" else {
                    throw .unexpected(operation: operation, reason: "the listing is not S3's XML")
                }
                return fields
            }
            found += page.records.compactMap { record in
                guard let key = record["Key"], key.hasPrefix(location.prefix), let id = record["UploadId"] else { return nil }
                return (MultipartUpload(key: String(key.dropFirst(location.prefix.count)), id: id), S3Dates.parse(record["Initiated"]))
            }
            markers = page.first["IsTruncated"] == "true" ? page.first["NextKeyMarker"].map { ($0, page.first["NextUploadIdMarker"] ?? "") } : nil
        } while markers != nil
        return found
    }
}

/// The timestamps S3 writes in listings (ISO 8601, with or without
/// fractions of a second); one missing or unreadable is long ago.
enum S3Dates {
    /// A date as S3 takes it, `2026-12-07T17:00:00Z` (whole seconds, rounded up: a retention never ends early).
    static func format(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.up)))
    }

    static func parse(_ text: String?) -> Date {
        guard let text else { return .distantPast }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text) ?? ISO8601DateFormatter().date(from: text) ?? .distantPast
    }
}
