import BackupCore

/// How uploads are received: where they wait, how large one may be, and
/// how long one may go without a chunk before it is abandoned.
public struct UploadSettings: Sendable {
    /// nil puts them in the blob store's folder, under `uploads`.
    public var directory: String?
    public var maximumBytes: UInt64 = 200 << 30
    public var lifetime: Duration = .seconds(24 * 3600)
    /// What all unfinished uploads together may announce, and the share of it one namespace's may.
    public var spoolBytes: UInt64 = 200 << 30
    public var namespaceShare = 0.5
    /// Free space the spool's disk keeps beyond every unfinished upload.
    public var reservedDiskBytes: UInt64 = 1 << 30
    /// What a received archive may hold, checked while it is validated.
    public var archiveLimits = SnapshotArchiveReader.Limits()

    public init() {}
}
