/// How uploads are received: where they wait, how large one may be, and
/// how long one may go without a chunk before it is abandoned.
public struct UploadSettings: Sendable {
    /// nil puts them in the blob store's folder, under `uploads`.
    public var directory: String?
    public var maximumBytes: UInt64 = 200 << 30
    public var lifetime: Duration = .seconds(24 * 3600)

    public init() {}
}
