import BackupRules
import CZstd
import Foundation


extension DumpChunk {
    /// Hands the chunk's content to `consume`, whole, once its blob was read
    /// (and decompressed) and the content checked against `sha256`.
    public func read(from store: any BlobStore, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws {
        try content(from: store, interruption: interruption).withUnsafeBytes(consume)
    }

    /// The chunk's content, its blob read (and decompressed) and checked against `sha256`.
    func content(from store: any BlobStore, interruption: Interruption?) throws -> [UInt8] {
        var stored = [UInt8]()
        stored.reserveCapacity(Int(blob.size))
        _ = try store.read(blob.hash, interruption: interruption) { stored.append(contentsOf: $0) }
        let content: [UInt8]
        if compressed {
            var output = [UInt8](repeating: 0, count: Int(size))
            let produced = output.withUnsafeMutableBytes { out in
                stored.withUnsafeBytes { ZSTD_decompress(out.baseAddress, out.count, $0.baseAddress, $0.count) }
            }
            guard ZSTD_isError(produced) == 0, produced == Int(size) else {
                throw DumpChunkError.undecodable(self, ZSTD_isError(produced) != 0 ? String(cString: ZSTD_getErrorName(produced)) : "\(produced) bytes")
            }
            content = output
        } else {
            content = stored
        }
        let actual = ContentHash.of(content)
        guard actual == sha256 else { throw DumpChunkError.wrongContent(self, actual: actual) }
        return content
    }
}

/// A chunk whose blob reads intact but whose content is not what was stored.
public enum DumpChunkError: Error, CustomStringConvertible {
    case undecodable(DumpChunk, String)
    case wrongContent(DumpChunk, actual: ContentHash)

    public var description: String {
        switch self {
        case let .undecodable(chunk, reason): "blob \(chunk.blob.hash) does not decompress to its \(chunk.size) bytes: \(reason)"
        case let .wrongContent(chunk, actual): "blob \(chunk.blob.hash) holds content hashing to \(actual), not \(chunk.sha256)"
        }
    }
}

/// A chunk of a dump, numbered from 1, that could not be read as stored.
/// Its description says why in public words (a storage error's, not its
/// path); the log detail keeps the whole reason.
public struct DumpReadError: ReportableError, CustomStringConvertible {
    public let index: Int
    public let count: Int
    public let chunk: DumpChunk
    public let reason: any Error
    public var description: String {
        "chunk \(index) of \(count) of the database dump: \((reason as? any ReportableError)?.publicError.description ?? "\(reason)")"
    }
    public var publicError: BackupError { .dataLoss(description) }
    public var logDetail: String { "chunk \(index) of \(count) of the database dump: \(reason)" }
}


extension StoredDump {
    /// How many chunks `read` decompresses at once: twice the cores, a few MiB.
    private static let chunksAtOnce = 2 * ProcessInfo.processInfo.activeProcessorCount

    /// Streams the dump's content in order, every chunk checked against its
    /// hash (a chunk that is not is named, `DumpReadError`) and the whole
    /// against the dump's; returns its size. Whatever reads a dump (restore,
    /// download, verification) reads it through here.
    @discardableResult
    public func read(from store: any BlobStore, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        switch self {
        case .blob(let blob):
            return try store.read(blob.hash, interruption: interruption, consume)
        case let .chunks(sha256, size, chunks):
            let hasher = SHA256Hasher()
            var total: UInt64 = 0
            // A few chunks at once are read, decompressed and checked on all cores, then handed on in order.
            for start in stride(from: 0, to: chunks.count, by: Self.chunksAtOnce) {
                let batch = chunks[start..<min(start + Self.chunksAtOnce, chunks.count)]
                let contents = try concurrentMap(batch.count) { offset in
                    let (index, chunk) = (start + offset, batch[start + offset])
                    do {
                        return try chunk.content(from: store, interruption: interruption)
                    } catch let error as BlobStoreError {
                        if case .interrupted = error { throw error }
                        throw DumpReadError(index: index + 1, count: chunks.count, chunk: chunk, reason: error)
                    } catch let error as DumpChunkError {
                        throw DumpReadError(index: index + 1, count: chunks.count, chunk: chunk, reason: error)
                    }
                }
                for content in contents {
                    try content.withUnsafeBytes { content in
                        hasher.update(content)
                        total += UInt64(content.count)
                        try consume(content)
                    }
                }
            }
            let actual = hasher.finish()
            guard actual == sha256, total == size else { throw BlobStoreError.corrupt(sha256, actual: actual) }
            return total
        }
    }

    /// Writes the dump to a new file at `path`: a link to its blob where the
    /// store allows, else its content reassembled.
    public func materialize(at path: String, from store: any BlobStore, interruption: Interruption?) throws {
        if case .blob(let blob) = self { return try store.materialize(blob.hash, at: path) }
        let file = try LocalFile.create(path)
        do {
            try read(from: store, interruption: interruption) { try file.write($0) }
        } catch {
            FileSystem.remove(path)
            throw error
        }
    }
}

/// Cuts content where the content itself says (a gear rolling hash, as in
/// FastCDC), so bytes inserted or changed in one place move only the cuts
/// near them: the next dump of a database that changed a little shares
/// almost every chunk with the last. Chunks are 256 KiB to 4 MiB, about
/// 1 MiB on average.
public enum ContentDefinedChunker {
    public static let minimumSize = 256 << 10
    public static let averageSize = 1 << 20
    public static let maximumSize = 4 << 20
    /// Harder to match before the average size, easier after (normalized chunking).
    static let smallMask: UInt64 = ((1 << 22) - 1) << 42
    static let largeMask: UInt64 = ((1 << 18) - 1) << 46

    /// 256 fixed pseudo-random values (splitmix64 from a fixed seed): the same cuts on every machine, forever.
    static let gear: [UInt64] = {
        var state: UInt64 = 0x6261_636B_7570_6421
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()

    /// The length of the chunk that starts `bytes`, or nil when no cut is
    /// found and more content may follow (`atEnd` false).
    public static func cut(_ bytes: UnsafeRawBufferPointer, atEnd: Bool) -> Int? {
        let count = bytes.count
        guard count > minimumSize else { return atEnd ? count : nil }
        let end = min(count, maximumSize)
        var hash: UInt64 = 0
        return gear.withUnsafeBufferPointer { gear in
            var index = minimumSize
            let middle = min(end, averageSize)
            while index < middle {
                hash = (hash << 1) &+ gear[Int(bytes[index])]
                if hash & smallMask == 0 { return index + 1 }
                index += 1
            }
            while index < end {
                hash = (hash << 1) &+ gear[Int(bytes[index])]
                if hash & largeMask == 0 { return index + 1 }
                index += 1
            }
            return end == maximumSize || atEnd ? end : nil
        }
    }
}

/// Stores a dump file as content-defined chunks: each is hashed, and one
/// the store does not hold yet (`known` lists what earlier backups stored)
/// is zstd-compressed at `level` (kept raw when that saves nothing) and
/// written, several at a time on all cores.
public struct DumpChunkWriter: Sendable {
    public let store: any BlobStore
    public let level: Int32
    /// Chunks hashed and compressed at once (about 1 MiB each, at most 4 MiB).
    static let batch = 4

    public init(store: any BlobStore, level: Int32 = 1) {
        self.store = store
        self.level = level
    }

    /// The dump at `path` as chunks: a file, or a FIFO that `pg_dump` writes
    /// into while it runs (opening it waits for the writer; the dump ends
    /// when the writer closes it). `progress` hears the bytes read so far;
    /// `stored` hears each batch's blobs, written or reused, as soon as the
    /// batch is in the store (a job records them then, so a collection
    /// beside it keeps them however long the rest of the dump takes).
    public func store(file path: String, known: [ContentHash: DumpChunk], interruption: Interruption? = nil,
                      progress: (UInt64) -> Void = { _ in }, stored: ([StoredBlob]) throws -> Void = { _ in }) throws -> StoredDump {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw BlobStoreError.cannotRead(path: path, errno: errno) }
        defer { close(fd) }
        var read: UInt64 = 0
        let whole = SHA256Hasher()
        var known = known
        var chunks: [DumpChunk] = []
        var pending: [[UInt8]] = []
        var buffer = [UInt8]()
        var start = 0
        var atEnd = false
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 16)
        defer { block.deallocate() }
        while !atEnd || start < buffer.count {
            if interruption?.isSet == true { throw BlobStoreError.interrupted(path: path) }
            if !atEnd && buffer.count - start < ContentDefinedChunker.maximumSize {
                // Keep what is not cut yet, then read the next block behind it.
                buffer.removeSubrange(0..<start)
                start = 0
                let got = Glibc.read(fd, block.baseAddress, block.count)
                if got < 0 {
                    if errno == EINTR { continue }
                    throw BlobStoreError.cannotRead(path: path, errno: errno)
                }
                buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: block[0..<got]))
                read += UInt64(got)
                progress(read)
                atEnd = got == 0
                continue
            }
            let length = buffer.withUnsafeBytes { ContentDefinedChunker.cut(UnsafeRawBufferPointer(rebasing: $0[start...]), atEnd: atEnd) }
            guard let length else { continue }
            let piece = Array(buffer[start..<(start + length)])
            piece.withUnsafeBytes { whole.update($0) }
            start += length
            pending.append(piece)
            if pending.count == Self.batch || (atEnd && start == buffer.count) {
                chunks += try storeBatch(pending, known: &known, stored: stored)
                pending.removeAll(keepingCapacity: true)
            }
        }
        if !pending.isEmpty { chunks += try storeBatch(pending, known: &known, stored: stored) }
        return .chunks(sha256: whole.finish(), size: chunks.reduce(0) { $0 + $1.size }, chunks)
    }

    /// Hashes a batch of chunks and stores the new ones, on all cores.
    private func storeBatch(_ pieces: [[UInt8]], known: inout [ContentHash: DumpChunk], stored report: ([StoredBlob]) throws -> Void) throws -> [DumpChunk] {
        let hashes = pieces.map { ContentHash.of($0) }
        let seen = known
        let (store, level) = (self.store, self.level)
        let stored = try concurrentMap(pieces.count) { index -> DumpChunk? in
            let hash = hashes[index]
            // A chunk met earlier in this dump is stored by the first of its batch.
            if seen[hash] != nil || hashes.firstIndex(of: hash)! < index { return nil }
            return try Self.write(pieces[index], hash: hash, into: store, level: level)
        }
        for case let chunk? in stored { known[chunk.sha256] = chunk }
        try report(stored.compactMap { $0?.blob })
        return hashes.map { known[$0]! }
    }

    private static func write(_ piece: [UInt8], hash: ContentHash, into store: any BlobStore, level: Int32) throws -> DumpChunk {
        var frame = [UInt8](repeating: 0, count: ZSTD_compressBound(piece.count))
        let produced = frame.withUnsafeMutableBytes { out in
            piece.withUnsafeBytes { ZSTD_compress(out.baseAddress, out.count, $0.baseAddress, $0.count, level) }
        }
        // Content that does not shrink by a few percent (already compressed) is kept as it is.
        let compressed = ZSTD_isError(produced) == 0 && produced < piece.count - piece.count / 32
        let writer = try store.writer()
        if compressed {
            try frame.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[0..<produced])) }
        } else {
            try piece.withUnsafeBytes { try writer.write($0) }
        }
        return DumpChunk(sha256: hash, size: UInt64(piece.count), blob: try writer.finish(), compressed: compressed)
    }
}
