import AsyncHTTPClient
import BackupRules
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import NIOCore
import NIOHTTP1

/// Where an S3-compatible store keeps backupd's objects: its endpoint, the
/// bucket and a key prefix in it, the region requests are signed for, and
/// whether the bucket is named in the path (`http://host/bucket/key`, as
/// MinIO, Ceph and moto take it) or in the host name
/// (`https://bucket.host/key`, as AWS prefers).
public struct ObjectStoreLocation: Sendable {
    public var endpoint: String
    public var bucket: String
    public var prefix: String
    public var region: String
    public var pathStyle: Bool

    public init(endpoint: String, bucket: String, prefix: String = "", region: String, pathStyle: Bool) {
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.pathStyle = pathStyle
    }
}

/// What went wrong with a request to the object store. The description
/// names the operation, the object's key and what the store said; never a
/// credential, a signature or a signed query.
public enum ObjectStoreError: Error, CustomStringConvertible, Sendable {
    /// The store answered with an error status (and S3's error code when its body had one).
    case refused(operation: String, status: Int, code: String, message: String)
    /// No answer: the connection failed, was reset, or timed out.
    case unreachable(operation: String, reason: String)
    /// An answer backupd cannot use (a body that is not the XML S3 sends, a checksum that does not match).
    case unexpected(operation: String, reason: String)

    public var description: String {
        switch self {
        case let .refused(operation, status, code, message):
            "the object store refused \(operation): HTTP \(status)" + (code.isEmpty ? "" : " \(code)") + (message.isEmpty ? "" : ": \(message)")
        case let .unreachable(operation, reason): "the object store could not be reached for \(operation): \(reason)"
        case let .unexpected(operation, reason): "the object store's answer to \(operation) is not usable: \(reason)"
        }
    }

    /// The status code of a refusal (0 otherwise).
    public var status: Int {
        if case let .refused(_, status, _, _) = self { return status }
        return 0
    }

    /// Whether another try may succeed: no answer, or an answer saying
    /// the store is busy or failed inside (500, 502, 503 SlowDown, 504).
    var isTransient: Bool {
        switch self {
        case .unreachable: true
        case let .refused(_, status, _, _): [500, 502, 503, 504].contains(status)
        case .unexpected: false
        }
    }
}

/// An object the store lists: its key (without the location's prefix), size and last change.
public struct StoredObject: Sendable, Equatable {
    public let key: String
    public let size: UInt64
    public let lastModified: Date
}

/// The requests backupd makes of an S3-compatible store, each signed with
/// SigV4, over async-http-client: put (a whole object whose SHA-256 the
/// store checks), get (whole or a byte range, streamed), head, delete and
/// list. Keys are relative to the location's prefix.
public struct ObjectStoreClient: Sendable {
    public let location: ObjectStoreLocation
    private let signer: SignatureV4
    private let http: HTTPClient
    /// The endpoint's scheme, and the host (with a port other than the
    /// scheme's own) and path that requests go to, the bucket in one of them.
    private let scheme: String
    private let host: String
    private let basePath: String
    /// How long one request may take before it counts as failed.
    public var requestTimeout: TimeAmount = .seconds(60)
    /// How requests that failed in a way worth another try are tried again.
    public var retries = RetryPolicy()
    /// Waits between tries (a test's clock may stand in).
    public var sleep: @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) }

    /// Refused when the location's endpoint is not an `http` or `https` URL.
    public init(location: ObjectStoreLocation, credentials: ObjectStoreCredentials, http: HTTPClient) throws(ObjectStoreError) {
        guard let endpoint = URLComponents(string: location.endpoint), let scheme = endpoint.scheme, ["http", "https"].contains(scheme),
              var host = endpoint.host, !host.isEmpty else {
            throw .unexpected(operation: "reaching the store", reason: "the endpoint \(location.endpoint) is not an http or https URL")
        }
        if let port = endpoint.port, port != (scheme == "http" ? 80 : 443) { host += ":\(port)" }
        self.location = location
        self.signer = SignatureV4(credentials: credentials, region: location.region)
        self.http = http
        self.scheme = scheme
        (self.host, self.basePath) = location.pathStyle
            ? (host, endpoint.path + "/" + SignatureV4.encode(location.bucket))
            : (location.bucket + "." + host, endpoint.path)
    }

    /// Makes the bucket (for setting a store up; a bucket that exists and is
    /// ours is fine), with object lock (and so versioning) when `objectLock`.
    public func createBucket(objectLock: Bool = false) async throws(ObjectStoreError) {
        let response = try await send("PUT", key: nil, headers: objectLock ? [("x-amz-bucket-object-lock-enabled", "true")] : [],
                                      operation: "creating bucket \(location.bucket)")
        if response.status != .ok, response.status != .conflict {
            throw await Self.refusal(response, operation: "creating bucket \(location.bucket)")
        }
    }

    /// Stores `bytes` under `key`, sending their SHA-256 for the store to check;
    /// done only once the store has answered that it holds them.
    public func put(_ key: String, _ bytes: ByteBuffer, sha256: ContentHash) async throws(ObjectStoreError) {
        let operation = "storing \(key)"
        let checksum = Data(sha256.digest).base64EncodedString()
        try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("PUT", key: key, headers: [("Content-Length", "\(bytes.readableBytes)"), ("x-amz-checksum-sha256", checksum)],
                                          body: bytes, payloadHash: sha256.hex, operation: operation)
            guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
            if let echoed = response.headers.first(name: "x-amz-checksum-sha256"), echoed != checksum {
                throw .unexpected(operation: operation, reason: "the store answered with checksum \(echoed), not the content's \(checksum)")
            }
        }
    }

    /// The bytes `range` covers of the object under `key` (fewer at its end),
    /// with the object's whole size; nil when there is no such object. Tried
    /// again as a whole when the body breaks off, so a blob is read a range
    /// at a time.
    public func read(_ key: String, range: ClosedRange<UInt64>) async throws(ObjectStoreError) -> (bytes: ByteBuffer, objectSize: UInt64)? {
        let operation = "reading \(key)"
        let limit = Int(range.upperBound - range.lowerBound + 1)
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("GET", key: key, headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound)")], operation: operation)
            switch response.status {
            case .partialContent:
                // Content-Range: bytes FIRST-LAST/SIZE
                guard let size = response.headers.first(name: "Content-Range")?.split(separator: "/").last.flatMap({ UInt64($0) }) else {
                    throw .unexpected(operation: operation, reason: "a partial answer without the object's size")
                }
                return (try await Self.body(response, upTo: limit, operation: operation), size)
            case .ok:
                // The whole object: a store that ignores ranges, for one no larger than the range.
                let bytes = try await Self.body(response, upTo: limit, operation: operation)
                return (bytes, UInt64(bytes.readableBytes))
            case .rangeNotSatisfiable where range.lowerBound == 0:
                // An empty object has no byte 0.
                _ = try? await Self.body(response, upTo: 4 << 20, operation: operation)
                guard let size = try await size(of: key) else { return nil }
                guard size == 0 else { throw .unexpected(operation: operation, reason: "byte 0 of an object of \(size) bytes was refused") }
                return (ByteBuffer(), 0)
            case .notFound:
                return nil
            default:
                throw await Self.refusal(response, operation: operation)
            }
        }
    }

    /// Streams an object's content (or the bytes `range` covers) to
    /// `consume`, a buffer at a time; nil when there is no such object.
    public func get(_ key: String, range: ClosedRange<UInt64>? = nil,
                    _ consume: (ByteBuffer) async throws -> Void) async throws -> Bool {
        let operation = "reading \(key)"
        let response = try await send("GET", key: key, headers: range.map { [("Range", "bytes=\($0.lowerBound)-\($0.upperBound)")] } ?? [],
                                      operation: operation)
        switch response.status {
        case .ok, .partialContent:
            // A failure while the body arrives is the store's; one of `consume` is the caller's own.
            var body = response.body.makeAsyncIterator()
            while true {
                let buffer: ByteBuffer?
                do {
                    buffer = try await body.next()
                } catch {
                    throw ObjectStoreError.unreachable(operation: operation, reason: Self.reason(error))
                }
                guard let buffer else { return true }
                try await consume(buffer)
            }
        case .notFound:
            return false
        default:
            throw await Self.refusal(response, operation: operation)
        }
    }

    /// The size of the object under `key`; nil when there is none.
    public func size(of key: String) async throws(ObjectStoreError) -> UInt64? {
        let operation = "looking for \(key)"
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("HEAD", key: key, operation: operation)
            switch response.status {
            case .ok:
                guard let length = response.headers.first(name: "Content-Length").flatMap(UInt64.init) else {
                    throw .unexpected(operation: operation, reason: "no Content-Length")
                }
                return length
            case .notFound:
                return nil
            default:
                throw await Self.refusal(response, operation: operation)
            }
        }
    }

    /// Removes the object under `key`; one that is not there counts as removed.
    public func delete(_ key: String) async throws(ObjectStoreError) {
        let operation = "removing \(key)"
        try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("DELETE", key: key, operation: operation)
            guard response.status == .noContent || response.status == .ok || response.status == .notFound else {
                throw await Self.refusal(response, operation: operation)
            }
        }
    }

    /// Removes the objects under `keys` (up to 1,000) in one request and
    /// returns those the store could not remove, each with its reason.
    public func delete(_ keys: [String]) async throws(ObjectStoreError) -> [(key: String, reason: String)] {
        try await deleteObjects(keys.map { ($0, nil) })
    }

    /// Removes `versions` (up to 1,000) in one request and returns the keys
    /// of those the store could not remove (a version it still retains),
    /// each with its reason.
    public func delete(versions: [ObjectVersion]) async throws(ObjectStoreError) -> [(key: String, reason: String)] {
        try await deleteObjects(versions.map { ($0.key, $0.id) })
    }

    /// DeleteObjects: each object by its key, and its version when named.
    private func deleteObjects(_ objects: [(key: String, version: String?)]) async throws(ObjectStoreError) -> [(key: String, reason: String)] {
        guard !objects.isEmpty else { return [] }
        let operation = "removing \(objects.count) objects"
        let body = "<Delete><Quiet>true</Quiet>" + objects.map { object in
            "<Object><Key>\(Self.xmlEscaped(location.prefix + object.key))</Key>"
                + (object.version.map { "<VersionId>\(Self.xmlEscaped($0))</VersionId>" } ?? "") + "</Object>"
        }.joined() + "</Delete>"
        let bytes = Array(body.utf8), hash = ContentHash.of(bytes)
        return try await retrying(operation) { () throws(ObjectStoreError) in
            let response = try await send("POST", key: nil, query: [("delete", "")],
                                          headers: [("Content-Length", "\(bytes.count)"), ("x-amz-sdk-checksum-algorithm", "SHA256"),
                                                    ("x-amz-checksum-sha256", Data(hash.digest).base64EncodedString())],
                                          body: ByteBuffer(bytes: bytes), payloadHash: hash.hex, operation: operation)
            guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
            let fields = XMLFields(ObjectStoreClient.data(try await Self.body(response, upTo: 4 << 20, operation: operation)),
                                   wanted: ["Key", "Code", "Message"], record: ["Error"])
            guard fields.parsed, fields.root == "DeleteResult" else { throw .unexpected(operation: operation, reason: "the answer is not S3's XML") }
            return fields.records.map { (String(($0["Key"] ?? "").dropFirst(location.prefix.count)), "\($0["Code"] ?? "") \($0["Message"] ?? "")") }
        }
    }

    /// Every object whose key starts with `prefix`, a page (up to 1,000) at a time.
    public func list(prefix: String) async throws(ObjectStoreError) -> [StoredObject] {
        var objects: [StoredObject] = []
        var continuation: String?
        repeat {
            let operation = "listing \(prefix.isEmpty ? "the store" : prefix)"
            var query = [("list-type", "2"), ("prefix", location.prefix + prefix)]
            if let continuation { query.append(("continuation-token", continuation)) }
            let page = try await retrying(operation) { () throws(ObjectStoreError) in
                let response = try await send("GET", key: nil, query: query, operation: operation)
                guard response.status == .ok else { throw await Self.refusal(response, operation: operation) }
                let page = ListPage(ObjectStoreClient.data(try await Self.body(response, upTo: 4 << 20, operation: operation)))
                guard page.understood else { throw .unexpected(operation: operation, reason: "the listing is not S3's XML") }
                return page
            }
            objects += page.objects.compactMap { object in
                object.key.hasPrefix(location.prefix) ? StoredObject(key: String(object.key.dropFirst(location.prefix.count)),
                                                                     size: object.size, lastModified: object.lastModified) : nil
            }
            continuation = page.truncated ? page.continuation : nil
        } while continuation != nil
        return objects
    }

    // MARK: - Requests

    /// Signs and sends one request; a failure to get an answer is `unreachable`.
    func send(_ method: String, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [],
                      body: ByteBuffer? = nil, payloadHash: String = SignatureV4.emptyPayload,
                      operation: String) async throws(ObjectStoreError) -> HTTPClientResponse {
        var path = basePath
        if let key { path += "/" + SignatureV4.encode(location.prefix + key, keepingSlashes: true) }
        let unsigned = ObjectStoreRequest(method: method, host: host, path: path.isEmpty ? "/" : path,
                                          query: query.map { (name: $0.0, value: $0.1) }, headers: headers.map { (name: $0.0, value: $0.1) })
        let signed = signer.sign(unsigned, payloadHash: payloadHash, at: Date())
        var request = HTTPClientRequest(url: "\(scheme)://\(host)\(signed.path)" + (query.isEmpty ? "" : "?" + signed.queryString))
        request.method = HTTPMethod(rawValue: method)
        request.headers.add(name: "Host", value: host)
        for (name, value) in signed.headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(body) }
        do {
            return try await http.execute(request, timeout: requestTimeout)
        } catch {
            throw .unreachable(operation: operation, reason: Self.reason(error))
        }
    }

    /// What a transport failure was, in words without the request in them.
    private static func reason(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout: return "the request timed out"
            case .remoteConnectionClosed: return "the connection was closed"
            default: return "\(error)"
            }
        }
        return "\(error)"
    }

    /// Tries `request` again, after the policy's wait, while it fails in a
    /// way another try may not (no answer, or 500, 502, 503 or 504). Only
    /// for requests that are safe to repeat.
    func retrying<T>(_ operation: String, _ request: () async throws(ObjectStoreError) -> T) async throws(ObjectStoreError) -> T {
        var attempt = 1
        while true {
            do {
                return try await request()
            } catch {
                guard error.isTransient, attempt < retries.attempts else { throw error }
                do { try await sleep(retries.delay(beforeTry: attempt + 1, unit: Double.random(in: 0..<1))) } catch { throw .unreachable(operation: operation, reason: "cancelled") }
                attempt += 1
            }
        }
    }

    /// The body of an answer: at most `limit` bytes (an error, a listing: 4 MiB).
    static func body(_ response: HTTPClientResponse, upTo limit: Int, operation: String) async throws(ObjectStoreError) -> ByteBuffer {
        do {
            return try await response.body.collect(upTo: limit)
        } catch let error as NIOTooManyBytesError {
            throw .unexpected(operation: operation, reason: "the answer is longer than the \(limit) bytes asked for (\(error))")
        } catch {
            throw .unreachable(operation: operation, reason: reason(error))
        }
    }

    static func data(_ buffer: ByteBuffer) -> Data { Data(buffer.readableBytesView) }

    static func xmlEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    /// A refusal, with the S3 error code and message of its body when it has them.
    static func refusal(_ response: HTTPClientResponse, operation: String) async -> ObjectStoreError {
        let body = (try? await Self.body(response, upTo: 4 << 20, operation: operation)).map { ObjectStoreClient.data($0) } ?? Data()
        let fields = XMLFields(body, wanted: ["Code", "Message"])
        return .refused(operation: operation, status: Int(response.status.code), code: fields.first["Code"] ?? "",
                        message: fields.first["Message"] ?? "")
    }
}

/// A page of ListObjectsV2's answer.
private struct ListPage: Sendable {
    var objects: [(key: String, size: UInt64, lastModified: Date)] = []
    var truncated = false
    var continuation: String?
    var understood = false

    init(_ xml: Data) {
        let fields = XMLFields(xml, wanted: ["Key", "Size", "LastModified", "IsTruncated", "NextContinuationToken"], record: ["Contents"])
        understood = fields.parsed && fields.root == "ListBucketResult"
        truncated = fields.first["IsTruncated"] == "true"
        continuation = fields.first["NextContinuationToken"]
        objects = fields.records.compactMap { record in
            guard let key = record["Key"], let size = record["Size"].flatMap(UInt64.init) else { return nil }
            let modified = S3Dates.parse(record["LastModified"])
            return (key, size, modified)
        }
    }
}

/// The text of chosen elements of an XML document: the first of each
/// outside records, and per element named in `record` the ones inside it
/// (with that element's name under `recordName`).
final class XMLFields: NSObject, XMLParserDelegate {
    static let recordName = "#record"
    private let wanted: Set<String>
    private let record: Set<String>
    private(set) var first: [String: String] = [:]
    private(set) var records: [[String: String]] = []
    private(set) var root: String?
    private(set) var parsed = false
    private var current: [String: String]?
    private var text = ""

    init(_ xml: Data, wanted: Set<String>, record: Set<String> = []) {
        self.wanted = wanted
        self.record = record
        super.init()
        let parser = XMLParser(data: xml)
        parser.delegate = self
        parsed = parser.parse()
    }

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        if root == nil { root = name }
        if record.contains(name) { current = [Self.recordName: name] }
        text = ""
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        text += string
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if record.contains(name), let done = current {
            records.append(done)
            current = nil
        } else if wanted.contains(name) {
            if current != nil {
                current?[name] = text
            } else if first[name] == nil {
                first[name] = text
            }
        }
        text = ""
    }
}
