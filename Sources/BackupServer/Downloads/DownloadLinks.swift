import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire
import NIOCore
import Synchronization

/// Turns download records into what callers see: the archive's file name
/// and, once it is ready, its URL, signed until the download's expiry.
final class DownloadLinks: Sendable {
    /// `https://HOST:PORT` that URLs start with: configured, or the listener's once it is bound.
    private let base: Mutex<String>
    private let configured: Bool
    private let currentKeys: Mutex<URLSigningKeys?>

    init(keys: URLSigningKeys?, publicURL: String?, host: String, port: Int) {
        currentKeys = Mutex(keys)
        configured = publicURL != nil
        base = Mutex(publicURL.map { String($0.reversed().drop { $0 == "/" }.reversed()) } ?? Self.origin(host: host, port: port))
    }

    /// The keys that sign new URLs and verify requests; a reload replaces them.
    var keys: URLSigningKeys? {
        get { currentKeys.withLock { $0 } }
        set { currentKeys.withLock { $0 = newValue } }
    }

    /// The listener's bound address, for URLs when none was configured.
    func listening(on address: SocketAddress, host: String) {
        guard !configured, let port = address.port else { return }
        base.withLock { $0 = Self.origin(host: host, port: port) }
    }

    private static func origin(host: String, port: Int) -> String {
        let name = ["0.0.0.0", "::", ""].contains(host) ? "localhost" : host
        return "https://\(name.contains(":") ? "[\(name)]" : name):\(port)"
    }

    static let prefix = "/v1/downloads/"

    static func fileName(_ record: DownloadRecord) -> String {
        SnapshotArchive.downloadName(snapshotID: record.backupID, createdUnixMS: record.backupCreatedUnixMS,
                                     databaseOnly: record.databaseOnly)
    }

    /// The path a download is fetched at: what its signature covers.
    static func path(_ record: DownloadRecord) -> String {
        prefix + record.id + "/" + fileName(record)
    }

    /// The download id and file name a request path names, if it has the
    /// shape of a download's path at all.
    static func parse(path: Substring) -> (id: String, fileName: Substring)? {
        guard path.hasPrefix(prefix) else { return nil }
        let rest = path.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let id = rest[..<slash], name = rest[rest.index(after: slash)...]
        guard id.count == 36, !name.isEmpty, !name.contains("/") else { return nil }
        return (String(id), name)
    }

    func message(_ record: DownloadRecord) -> Download {
        .with {
            $0.id = record.id; $0.backupID = record.backupID; $0.databaseOnly = record.databaseOnly; $0.jobID = record.jobID
            $0.filename = Self.fileName(record); $0.error = record.error
            guard record.state == .ready, let keys = self.keys else { return }
            $0.ready = true
            $0.sizeBytes = record.size
            $0.sha256 = record.sha256
            // Whole seconds, as the URL carries it.
            let expires = record.expiresUnixMS / 1000
            $0.urlExpiresUnixMS = expires * 1000
            let path = Self.path(record)
            $0.url = base.withLock { $0 } + path + "?" + keys.signedQuery(path: path, expires: expires)
        }
    }
}
