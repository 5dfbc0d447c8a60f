import BackupRules
import BackupStorage

/// How uploads are received: where they wait, how large one may be, and
/// how long one may go without a chunk before it is abandoned.
public struct UploadSettings: Sendable {
    /// nil puts them in the blob store's folder, under `uploads`.
    public var directory: String?
    public var maximumBytes: UInt64 = 200 << 30
    public var lifetime: Duration = .seconds(24 * 3600)
    /// What all unfinished uploads together may announce, and the share of it one namespace's may.
    public var spoolBytes: UInt64 = 200 << 30
    public var namespaceShare = NamespaceShare.half
    /// Free space the spool's disk keeps beyond every unfinished upload.
    public var reservedDiskBytes: UInt64 = 1 << 30
    /// An upload that receives less than `minimumRate` bytes a second over a
    /// whole `rateWindow` expires, however much trickles in: a reservation is
    /// not held by a byte a day.
    public var minimumRate: UInt64 = 1024
    public var rateWindow: Duration = .seconds(6 * 3600)
    /// What a received archive may hold, checked while it is validated: as
    /// many documents as a backup may hold, beside `.metadata` and the dump.
    public var archiveLimits = SnapshotArchiveReader.Limits(members: AppDatabasePolicy().maximumFilesPerBackup + 2)

    public init() {}
}
