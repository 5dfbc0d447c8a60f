/// The content types a backup is made of, as the catalog records them:
/// values only, no I/O (reading and writing them is `BackupStorage`'s).

/// The address of a blob: the SHA-256 of its content, shown as lowercase
/// hex. The 32 bytes are held inline rather than as text, as the manifest
/// of an upload of half a million documents holds as many of them.
public struct ContentHash: Hashable, Sendable, CustomStringConvertible {
    /// The digest's bytes, eight at a time, most significant first.
    private let words: (first: UInt64, second: UInt64, third: UInt64, fourth: UInt64)

    /// Accepts exactly 64 lowercase hex digits.
    public init?(hex: String) {
        guard hex.utf8.count == 64 else { return nil }
        var words: [UInt64] = [0, 0, 0, 0]
        var index = 0
        for byte in hex.utf8 {
            let value: UInt8
            switch byte {
            case 48...57: value = byte - 48
            case 97...102: value = byte - 87
            default: return nil
            }
            words[index >> 4] = words[index >> 4] << 4 | UInt64(value)
            index += 1
        }
        self.words = (words[0], words[1], words[2], words[3])
    }

    /// The hash whose digest is these 32 bytes.
    public init(digest: some Collection<UInt8>) {
        precondition(digest.count == 32, "a SHA-256 digest is 32 bytes")
        self.words = Array(digest).withUnsafeBytes { raw in
            (UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
             UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
             UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
             UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
        }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.words == rhs.words }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.first)
        hasher.combine(words.second)
        hasher.combine(words.third)
        hasher.combine(words.fourth)
    }

    /// The 32 bytes of the digest (what S3's `x-amz-checksum-sha256` carries, in base64).
    public var digest: [UInt8] {
        [words.first, words.second, words.third, words.fourth].flatMap { word in
            (0..<8).map { UInt8(truncatingIfNeeded: word &>> (56 - 8 * $0)) }
        }
    }

    /// 64 lowercase hex digits.
    public var hex: String {
        String(unsafeUninitializedCapacity: 64) { buffer in
            func put(_ word: UInt64, at offset: Int) {
                for nibble in 0..<16 {
                    let value = UInt8(truncatingIfNeeded: word &>> (60 - 4 * nibble)) & 0x0f
                    buffer[offset + nibble] = value < 10 ? 48 &+ value : 87 &+ value
                }
            }
            put(words.first, at: 0)
            put(words.second, at: 16)
            put(words.third, at: 32)
            put(words.fourth, at: 48)
            return 64
        }
    }

    public var description: String { hex }
}

/// A blob that is in the store.
public struct StoredBlob: Sendable, Equatable {
    /// The SHA-256 of the content.
    public let hash: ContentHash
    public let size: UInt64
    /// False when the store already had this content and wrote nothing.
    public let written: Bool
    /// Where the store keeps it: its hash for content kept as is, the
    /// namespace's address of that hash for content kept encrypted. The
    /// catalog's blob rows, and collection, go by this name.
    public let name: ContentHash

    /// `written` is false for a blob known from the catalog, not just stored.
    public init(hash: ContentHash, size: UInt64, written: Bool = false, name: ContentHash? = nil) {
        self.hash = hash
        self.size = size
        self.written = written
        self.name = name ?? hash
    }
}

/// One piece of a chunked dump: the hash and size of its content, and the
/// blob that holds it, a zstd frame or, when compressing saved nothing, the
/// content as is.
public struct DumpChunk: Sendable, Equatable {
    public let sha256: ContentHash
    public let size: UInt64
    public let blob: StoredBlob
    public let compressed: Bool

    public init(sha256: ContentHash, size: UInt64, blob: StoredBlob, compressed: Bool) {
        self.sha256 = sha256
        self.size = size
        self.blob = blob
        self.compressed = compressed
    }
}

/// How a backup's dump is kept: one blob (backups made before dumps were
/// chunked, and kept readable), or content-defined chunks in order.
public enum StoredDump: Sendable, Equatable {
    case blob(StoredBlob)
    case chunks(sha256: ContentHash, size: UInt64, [DumpChunk])

    /// The SHA-256 of the whole dump, as `pg_dump` wrote it.
    public var sha256: ContentHash {
        switch self {
        case .blob(let blob): blob.hash
        case .chunks(let sha256, _, _): sha256
        }
    }

    public var size: UInt64 {
        switch self {
        case .blob(let blob): blob.size
        case .chunks(_, let size, _): size
        }
    }

    /// Every blob the dump refers to.
    public var blobs: [StoredBlob] {
        switch self {
        case .blob(let blob): [blob]
        case .chunks(_, _, let chunks): chunks.map(\.blob)
        }
    }
}

/// A full snapshot as the public archive format lays it out (a gzip tar):
/// `.metadata` (a JSON object of strings), `db/db.backup` (the custom-format
/// dump) and `tree/xx/yy/KEY` (each file document under its storage key,
/// in folders named by the key's characters 1-2 and 3-4). The tar is written
/// with libarchive, every blob read through the blob store's streaming
/// interface, so no member is ever held whole in memory; `GzipMembers`
/// compresses it on all cores.
public struct SnapshotArchive: Sendable {
    /// `.metadata`; the writer adds a SHA-256 per member (`sha256:PATH`).
    public var metadata: [String: String]
    public var dump: StoredDump
    public var files: [(key: String, blob: StoredBlob)]
    /// Modification time of every member, Unix seconds: the snapshot's.
    public var modified: Int64

    public init(metadata: [String: String], dump: StoredDump, files: [(key: String, blob: StoredBlob)], modified: Int64) {
        self.metadata = metadata
        self.dump = dump
        self.files = files
        self.modified = modified
    }
}
