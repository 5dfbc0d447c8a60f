import BackupRules

/// One call's receipt of an upload's chunks as a pure state machine: which
/// chunk may be written, when written bytes are counted, and what a call
/// that ends (finished, refused, cut off) still counts. No I/O and no clock
/// read; `UploadSpool.receive` writes, hashes, fsyncs and asks the catalog
/// as it says.
///
///     receiving ──chunk at the next offset──▶ write ──written──▶ receiving
///         │          (a batch due: count, the last byte checking the hash)
///         │ chunk refused, writer lease lost, call ended or cut off
///         ▼
///       ended: what was written whole is counted, unless the lease went
///
/// Bytes count once written, fsynced and hashed: a batch at a time (64 MiB,
/// a second's worth of at least 1 MiB, or the last byte), and when the call
/// ends however it ends. Each count is a segment in the blob store, so
/// counts under 1 MiB that are not the last byte are few: only a call's end
/// makes one, and an upload has at most 256 of them; past those, a call's
/// last bytes under 1 MiB are not counted and the client sends them again
/// (calls of a byte each cannot fill the store with objects). An upload
/// whose writer lease is lost (another call took it, or it expired) counts
/// nothing more from this call.
struct UploadReceipt: Sendable {
    typealias Instant = ContinuousClock.Instant

    /// Written bytes to fsync and count in the catalog; `complete` when they are the upload's last, whose hash is checked first.
    struct Count: Equatable, Sendable {
        let from: UInt64
        let to: UInt64
        let complete: Bool
    }

    enum Phase: Equatable, Sendable {
        case receiving
        /// A chunk is being written.
        case writing(length: UInt64)
        case ended
    }

    static let countedBatchBytes: UInt64 = 64 << 20
    static let countedBatchInterval: Duration = .seconds(1)
    /// A count smaller than this (not the last byte) is a small segment.
    static let smallestSegmentBytes: UInt64 = 1 << 20
    /// How many small segments one upload may have.
    static let smallSegmentsPerUpload = 256

    let uploadID: String
    let size: UInt64
    private(set) var phase = Phase.receiving
    /// Bytes the catalog counts.
    private(set) var counted: UInt64
    /// Bytes written and hashed.
    private(set) var written: UInt64
    private var lastCount: Instant
    private var leaseLost = false
    private let smallSegmentsLeft: Int

    /// `smallSegments`: how many the upload has already.
    init(uploadID: String, size: UInt64, counted: UInt64, smallSegments: Int = 0, now: Instant) {
        self.uploadID = uploadID
        self.size = size
        self.counted = counted
        written = counted
        lastCount = now
        smallSegmentsLeft = max(0, Self.smallSegmentsPerUpload - smallSegments)
    }

    var isComplete: Bool { counted == size }

    /// A chunk arrived: nil to write it at `written`, or the refusal that ends the call.
    mutating func chunk(uploadID: String, offset: UInt64, length: Int) -> BackupError? {
        if case .writing = phase { preconditionFailure("a chunk while one is written") }
        let refusal: BackupError? = if uploadID != self.uploadID {
            .invalidArgument("a call sends the chunks of one upload; it began with \(self.uploadID), not \(uploadID)")
        } else if written == size {
            .outOfRange("chunk at offset \(offset) goes past the upload's announced size of \(size) bytes")
        } else if offset != written {
            .outOfRange("chunk at offset \(offset), but upload \(self.uploadID) expects offset \(written)")
        } else if length == 0 {
            .invalidArgument("a chunk must carry data; this one is empty")
        } else if UInt64(length) > size - written {
            .outOfRange("chunk of \(length) bytes at offset \(written) goes past the upload's announced size of \(size) bytes")
        } else {
            nil
        }
        if refusal == nil && phase == .receiving { phase = .writing(length: UInt64(length)) }
        return refusal
    }

    /// The chunk is written and hashed; a count when a batch is due.
    mutating func written(now: Instant) -> Count? {
        guard case .writing(let length) = phase else { preconditionFailure("written while \(phase)") }
        written += length
        phase = .receiving
        let pending = written - counted
        let due = written == size || pending >= Self.countedBatchBytes
            || (pending >= Self.smallestSegmentBytes && lastCount.duration(to: now) >= Self.countedBatchInterval)
        return due ? dueCount : nil
    }

    /// The catalog counted up to `to`.
    mutating func counted(to: UInt64, now: Instant) {
        counted = to
        lastCount = now
    }

    /// The catalog says the upload is no longer this call's to write (another
    /// call took its lease, or it expired): the refusal that ends the call.
    mutating func writerLeaseLost() -> BackupError {
        leaseLost = true
        phase = .ended
        return .aborted("upload \(uploadID) is no longer this call's to write (its lease ran out, or it expired); "
                        + "ask GetUpload where to go on")
    }

    /// The call ended: no more chunks, a refusal, a failed write, or the
    /// client gone. What it wrote whole counts, unless the lease was lost,
    /// or it is a small segment past the upload's share of them.
    mutating func ended(now: Instant) -> Count? {
        if case .writing = phase { phase = .receiving }  // a write that failed counts nothing
        defer { phase = .ended }
        guard phase == .receiving, !leaseLost, let count = dueCount else { return nil }
        guard count.complete || count.to - count.from >= Self.smallestSegmentBytes || smallSegmentsLeft > 0 else { return nil }
        return count
    }

    private var dueCount: Count? {
        written > counted ? Count(from: counted, to: written, complete: written == size) : nil
    }
}
