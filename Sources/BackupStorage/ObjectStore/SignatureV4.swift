import BackupRules
import Foundation

/// The credentials of an S3-compatible store: an access key id and its
/// secret (never printed: `Secret`), and a session token for temporary
/// credentials.
public struct ObjectStoreCredentials: Sendable {
    public let accessKeyID: String
    public let secretAccessKey: Secret<String>
    public let sessionToken: Secret<String>?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = Secret(secretAccessKey)
        self.sessionToken = sessionToken.map { Secret($0) }
    }
}

/// One HTTP request to an S3-compatible store, before and after signing:
/// the method, the path (already percent-encoded, as sent), the query
/// parameters (not encoded), and the headers.
public struct ObjectStoreRequest: Sendable {
    public var method: String
    public var host: String
    public var path: String
    public var query: [(name: String, value: String)]
    public var headers: [(name: String, value: String)]

    public init(method: String, host: String, path: String, query: [(name: String, value: String)] = [],
                headers: [(name: String, value: String)] = []) {
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
    }

    /// The query string as sent: each name and value percent-encoded, in the given order.
    public var queryString: String {
        query.map { "\(SignatureV4.encode($0.name))=\(SignatureV4.encode($0.value))" }.joined(separator: "&")
    }
}

/// AWS Signature Version 4 for S3 (HMAC-SHA256 and SHA-256 from OpenSSL):
/// the canonical request, the string to sign, the day's signing key and
/// the `Authorization` header, as AWS documents them. The payload is named
/// by its SHA-256 or as `UNSIGNED-PAYLOAD` (its integrity then carried by
/// an `x-amz-checksum-sha256` header, which is signed).
public struct SignatureV4: Sendable {
    public let credentials: ObjectStoreCredentials
    public let region: String
    public let service = "s3"

    /// What `x-amz-content-sha256` says of a body not hashed into the signature.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// The SHA-256 of no bytes: the payload hash of a request without a body.
    public static let emptyPayload = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    public init(credentials: ObjectStoreCredentials, region: String) {
        self.credentials = credentials
        self.region = region
    }

    /// `request` with the headers that sign it added: `x-amz-date`,
    /// `x-amz-content-sha256`, `x-amz-security-token` for temporary
    /// credentials, and `Authorization`. Every header already there is signed.
    public func sign(_ request: ObjectStoreRequest, payloadHash: String, at date: Date) -> ObjectStoreRequest {
        var signed = request
        let (stamp, day) = Self.timestamps(date)
        signed.headers.removeAll { ["host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"]
            .contains($0.name.lowercased()) }
        signed.headers.append(("x-amz-date", stamp))
        signed.headers.append(("x-amz-content-sha256", payloadHash))
        if let token = credentials.sessionToken { signed.headers.append(("x-amz-security-token", token.revealed)) }
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let (canonical, signedHeaders) = Self.canonicalRequest(signed, payloadHash: payloadHash)
        let toSign = "AWS4-HMAC-SHA256\n\(stamp)\n\(scope)\n\(ContentHash.of(Array(canonical.utf8)).hex)"
        let signature = Self.hex(Secure.hmacSHA256(key: signingKey(day: day), Array(toSign.utf8)))
        signed.headers.append(("Authorization",
                               "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"))
        return signed
    }

    /// The canonical request of `request` (whose headers are all signed,
    /// with `host` beside them) and its list of signed headers.
    static func canonicalRequest(_ request: ObjectStoreRequest, payloadHash: String) -> (String, String) {
        var headers: [String: [String]] = ["host": [request.host]]
        for (name, value) in request.headers {
            headers[name.lowercased(), default: []].append(value.split(whereSeparator: \.isWhitespace).joined(separator: " "))
        }
        let names = headers.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(headers[$0]!.joined(separator: ","))\n" }.joined()
        let pairs: [(name: String, value: String)] = request.query.map { (encode($0.name), encode($0.value)) }
        let sorted = pairs.sorted { a, b in a.name != b.name ? a.name < b.name : a.value < b.value }
        let query = sorted.map { "\($0.name)=\($0.value)" }.joined(separator: "&")
        let signedHeaders = names.joined(separator: ";")
        let path = request.path.isEmpty ? "/" : request.path
        return ("\(request.method)\n\(path)\n\(query)\n\(canonicalHeaders)\n\(signedHeaders)\n\(payloadHash)", signedHeaders)
    }

    /// The key of one day, region and service, derived from the secret.
    private func signingKey(day: String) -> [UInt8] {
        var key = Secure.hmacSHA256(key: Array("AWS4\(credentials.secretAccessKey.revealed)".utf8), Array(day.utf8))
        for part in [region, service, "aws4_request"] { key = Secure.hmacSHA256(key: key, Array(part.utf8)) }
        return key
    }

    /// `20261206T153000Z` and `20261206`, in UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let day = String(format: "%04d%02d%02d", c.year!, c.month!, c.day!)
        return (day + String(format: "T%02d%02d%02dZ", c.hour!, c.minute!, c.second!), day)
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters
    /// (`A–Z a–z 0–9 - _ . ~`), and `/` too when `keepingSlashes`: how
    /// SigV4 wants query names and values, and object keys in a path.
    public static func encode(_ text: String, keepingSlashes: Bool = false) -> String {
        var encoded = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepingSlashes:
                encoded.append("/")
            default:
                encoded += String(format: "%%%02X", byte)
            }
        }
        return encoded
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }
}
