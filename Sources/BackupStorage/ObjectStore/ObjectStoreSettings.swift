import BackupRules
import Foundation

/// What names an object store in backupd's configuration, read and checked
/// before anything is sent to it.
public enum ObjectStoreSettings {
    /// A store's bucket and key prefix from `s3://BUCKET/PREFIX` (the prefix
    /// may be empty), its endpoint (AWS's own for the region when empty) and
    /// how the bucket is addressed.
    public static func location(url: String, endpoint: String, region: String, pathStyle: Bool) throws(ObjectStoreSettingsError) -> ObjectStoreLocation {
        guard url.hasPrefix("s3://") else { throw .invalid("--blob-store takes s3://BUCKET/PREFIX, not \(url)") }
        let rest = url.dropFirst("s3://".count)
        let bucket = String(rest.prefix { $0 != "/" })
        let prefix = String(rest.dropFirst(bucket.count + 1))
        // S3's rules for bucket names: 3 to 63 lower-case letters, digits, dots and dashes, a letter or digit at each end.
        let allowed = bucket.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == 45 || $0 == 46 }
        guard (3...63).contains(bucket.utf8.count), allowed, bucket.first!.isLetter || bucket.first!.isNumber,
              bucket.last!.isLetter || bucket.last!.isNumber else {
            throw .invalid("--blob-store: \"\(bucket)\" is not an S3 bucket name (3 to 63 lower-case letters, digits, dots and dashes)")
        }
        guard prefix.utf8.count <= 512, !prefix.hasPrefix("/"), !prefix.contains("//"),
              prefix.unicodeScalars.allSatisfy({ $0.properties.generalCategory != .control }) else {
            throw .invalid("--blob-store: the key prefix \"\(prefix)\" must be at most 512 bytes, without control characters or empty path segments")
        }
        guard !region.isEmpty, region.utf8.allSatisfy({ (97...122).contains($0) || (48...57).contains($0) || $0 == 45 }) else {
            throw .invalid("--s3-region: \"\(region)\" is not a region name")
        }
        let endpoint = endpoint.isEmpty ? "https://s3.\(region).amazonaws.com" : endpoint
        guard let parts = URLComponents(string: endpoint), ["http", "https"].contains(parts.scheme ?? ""), !(parts.host ?? "").isEmpty,
              parts.query == nil, parts.user == nil, parts.password == nil else {
            // Not quoted: credentials or a query put there may be secrets.
            throw .invalid("--s3-endpoint is not an http or https URL of a host (without credentials or query)")
        }
        return ObjectStoreLocation(endpoint: endpoint, bucket: bucket, prefix: prefix, region: region, pathStyle: pathStyle)
    }

    /// Credentials from a file in AWS's credentials format (`aws_access_key_id
    /// = …`, `aws_secret_access_key = …`, optionally `aws_session_token = …`;
    /// `[profile]` lines and comments are skipped), else from the values
    /// given (options or the environment).
    public static func credentials(file: String?, accessKeyID: String?, secretAccessKey: String?,
                                   sessionToken: String?) throws(ObjectStoreSettingsError) -> ObjectStoreCredentials {
        var fields: [String: String] = [:]
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw .invalid("--s3-credentials-file \(file) cannot be read")
            }
            for line in text.split(whereSeparator: \.isNewline) {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                guard !trimmed.isEmpty, !trimmed.hasPrefix("#"), !trimmed.hasPrefix(";"), !trimmed.hasPrefix("[") else { continue }
                guard let equals = trimmed.firstIndex(of: "=") else {
                    throw .invalid("--s3-credentials-file \(file): a line is not NAME = VALUE")  // the line may hold a secret: not quoted
                }
                fields[trimmed[..<equals].trimmingCharacters(in: .whitespaces).lowercased()] = trimmed[trimmed.index(after: equals)...]
                    .trimmingCharacters(in: .whitespaces)
            }
        }
        guard let id = fields["aws_access_key_id"] ?? accessKeyID, !id.isEmpty else {
            throw .invalid("the object store needs an access key id: --s3-access-key-id, AWS_ACCESS_KEY_ID or --s3-credentials-file")
        }
        guard let secret = fields["aws_secret_access_key"] ?? secretAccessKey, !secret.isEmpty else {
            throw .invalid("the object store needs a secret access key: AWS_SECRET_ACCESS_KEY or --s3-credentials-file")
        }
        return ObjectStoreCredentials(accessKeyID: id, secretAccessKey: secret, sessionToken: fields["aws_session_token"] ?? sessionToken)
    }
}

/// A configuration of the object store that cannot be used, said without any secret.
public enum ObjectStoreSettingsError: Error, CustomStringConvertible {
    case invalid(String)

    public var description: String {
        switch self { case let .invalid(message): message }
    }
}
