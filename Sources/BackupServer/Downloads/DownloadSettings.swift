import BackupRules
import BackupStorage

/// How downloads are prepared and handed out: the keys that sign their
/// URLs, how long a URL lasts, where archives wait and how much room they
/// may take.
public struct DownloadSettings: Sendable {
    /// Without keys, RequestDownload is refused: no URL could be signed.
    public var keys: URLSigningKeys?
    /// The file `keys` were read from: a reload reads it again.
    public var keyFile: String?
    /// How long a URL works, counted from when its archive is ready.
    public var urlLifetime: Duration = .seconds(8 * 3600)
    /// Where archives are kept while their URLs last; nil puts them in the blob store's folder, under `archives`.
    public var cacheDirectory: String?
    /// Bytes all archives together may take (those being prepared count what they may grow to).
    public var cacheBytes: UInt64 = 20 << 30
    /// The share of `cacheBytes` one namespace's archives may take, so one
    /// namespace cannot keep every other from downloading.
    public var cacheNamespaceShare = NamespaceShare.half
    /// Free space the cache's disk keeps beyond any archive: a download is refused before the disk fills.
    public var reservedDiskBytes: UInt64 = 1 << 30
    /// Answers streaming a file at once, in all and for one namespace; more get 503 with Retry-After.
    public var maximumStreams = 128
    public var maximumStreamsPerNamespace = 32
    /// gzip level of full archives, 0 (stored, for content that does not compress) to 9.
    public var gzipLevel = 6
    /// The scheme, host and port URLs start with, e.g. `https://backups.example.com:7443`; nil uses the listener's address.
    public var publicURL: String?

    public init() {}
}
