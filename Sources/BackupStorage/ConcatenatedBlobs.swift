import BackupRules
import NIOCore

/// Blobs read one after another as a single stream of bytes, a range at a
/// time through the store's ranged reads, each checked against its hash at
/// its end: the segments of an upload, which any process reads back from
/// the store to resume or validate it, wherever they were received.
public final class ConcatenatedBlobs: ArchiveByteSource {
    private let store: any BlobStore
    private let blobs: [StoredBlob]
    private let interruption: Interruption?
    /// Where the range read last is copied and stays until the next call:
    /// memory of this reader's own, so the pointer handed out stays valid.
    private let buffer: UnsafeMutableRawBufferPointer
    private var index = 0
    private var offset: UInt64 = 0
    private var hasher = SHA256Hasher()
    private let step: Int

    public init(_ blobs: [StoredBlob], in store: any BlobStore, interruption: Interruption? = nil) {
        self.store = store
        self.blobs = blobs
        self.interruption = interruption
        step = max(1 << 20, store.rangeReadSize)
        buffer = .allocate(byteCount: step, alignment: 1)
    }

    deinit { buffer.deallocate() }

    /// The next bytes, valid until the next call; empty once every blob was
    /// read whole and found to have its hash (`corrupt` or `missing` if not).
    public func nextBytes() throws -> UnsafeRawBufferPointer {
        while index < blobs.count {
            let blob = blobs[index]
            if offset < blob.size {
                if interruption?.isSet == true { throw BlobStoreError.interrupted(path: blob.hash.hex) }
                let length = Int(min(UInt64(step), blob.size - offset))
                let range = try store.read(blob, at: offset, length: length)
                // A blob shorter than recorded (or a store that answers more than asked) is not its content.
                guard range.readableBytes == length else { throw BlobStoreError.corrupt(blob.hash, actual: hasher.finish()) }
                range.withUnsafeReadableBytes { buffer.copyMemory(from: $0) }
                let bytes = UnsafeRawBufferPointer(rebasing: buffer[..<length])
                hasher.update(bytes)
                offset += UInt64(length)
                return bytes
            }
            let actual = hasher.finish()
            guard actual == blob.hash else { throw BlobStoreError.corrupt(blob.hash, actual: actual) }
            (index, offset, hasher) = (index + 1, 0, SHA256Hasher())
        }
        return UnsafeRawBufferPointer(start: nil, count: 0)
    }

    /// Hands every byte to `consume`, a range at a time.
    public func forEachChunk(_ consume: (UnsafeRawBufferPointer) throws -> Void) throws {
        while case let bytes = try nextBytes(), !bytes.isEmpty { try consume(bytes) }
    }
}
