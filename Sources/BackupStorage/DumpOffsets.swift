import BackupRules
import Foundation

/// Fills in where each table's data starts in a custom-format dump written
/// into a pipe. pg_dump records those offsets in the dump's table of
/// contents only when it can seek back to it; a dump written into a FIFO
/// (as backups are, to store it while it is written) has none, and
/// `pg_restore --jobs` then reads forward through the file to find each
/// table's data: 15–18 % of a restore of 300 tables (120 and 612 MB). `fill` reads the
/// table of contents and the data blocks' headers (skipping their content)
/// and writes each offset in place; the file keeps its size. A dump in a
/// version or shape it does not know is left as it is (pg_restore still
/// reads it, only slower). The dump may be an upload, anyone's bytes: the
/// reading holds no more than the table of contents' unset entries (at most
/// a million), takes each entry's first block as pg_restore does, fills
/// only 8-byte offsets (what pg_dump writes), and stops within a MiB once
/// `interruption` is set.
public enum DumpOffsets {
    /// Writes the data offsets into the dump at `path`; returns how many it
    /// filled in, 0 when there were none to fill or the dump was not understood.
    @discardableResult
    public static func fill(_ path: String, interruption: Interruption? = nil) throws -> Int {
        let fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
        defer { close(fd) }
        var reader = DumpReader(fd: fd, interruption: interruption)
        let layout: DumpLayout
        do {
            layout = try reader.readLayout()
        } catch is DumpReader.NotUnderstood {
            return 0
        }
        guard !layout.unset.isEmpty else { return 0 }
        var filled = 0
        for (dumpID, fieldPosition) in layout.unset {
            guard let blockStart = layout.blocks[dumpID] else { continue }
            var field = [DumpReader.offsetSet]
            var offset = blockStart
            for _ in 0..<layout.offsetSize {
                field.append(UInt8(truncatingIfNeeded: offset))
                offset >>= 8
            }
            guard field.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, off_t(fieldPosition)) }) == field.count else {
                throw BlobStoreError.cannotWrite(path: path, errno: errno)
            }
            filled += 1
        }
        return filled
    }
}

/// What `fill` needs of a dump: the size of an offset, where each TOC
/// entry without an offset keeps its offset field, and where the data
/// blocks of those entries start (the first block of each id).
private struct DumpLayout {
    var offsetSize = 0
    var unset: [(dumpID: Int, fieldPosition: UInt64)] = []
    var blocks: [Int: UInt64] = [:]
}

/// Reads pg_dump's custom archive format (pg_backup_archiver.c and
/// pg_backup_custom.c: `ReadHead`, `ReadToc`, `_ReadExtraToc`, the data
/// blocks) through a buffer, keeping the file position.
private struct DumpReader {
    static let offsetNotSet: UInt8 = 1
    static let offsetSet: UInt8 = 2
    private static let blockData: UInt8 = 1
    private static let blockLargeObjects: UInt8 = 3

    struct NotUnderstood: Error {}

    /// More unset entries than any dump of a real database has: past it, the dump is left as it is.
    static let maximumUnsetEntries = 1_000_000

    let fd: Int32
    let interruption: Interruption?
    private var buffer = [UInt8](repeating: 0, count: 1 << 20)
    private var bufferStart: UInt64 = 0
    private var bufferCount = 0
    private(set) var position: UInt64 = 0
    private var intSize = 4

    init(fd: Int32, interruption: Interruption?) {
        self.fd = fd
        self.interruption = interruption
    }

    mutating func readLayout() throws -> DumpLayout {
        guard try bytes(5) == Array("PGDMP".utf8) else { throw NotUnderstood() }
        let (major, minor) = (try byte(), try byte())
        _ = try byte()  // revision
        // Archive versions 1.12 (PostgreSQL 11) to 1.15 (16) share this layout, 1.14 adding the table access method.
        guard major == 1, (12...15).contains(minor) else { throw NotUnderstood() }
        intSize = Int(try byte())
        var layout = DumpLayout()
        layout.offsetSize = Int(try byte())
        // pg_dump writes 8-byte offsets; a shorter one would wrap offsets past its range onto other bytes.
        guard (1...8).contains(intSize), layout.offsetSize == 8, try byte() == 1 else { throw NotUnderstood() }  // 1: custom
        if minor >= 15 { _ = try byte() } else { _ = try int() }  // compression
        for _ in 0..<7 { _ = try int() }  // creation time
        for _ in 0..<3 { try skipString() }  // database, server and pg_dump versions
        let entries = try int()
        guard entries >= 0 else { throw NotUnderstood() }
        for _ in 0..<entries {
            let dumpID = try int()
            _ = try int()  // has a dumper
            for _ in 0..<4 { try skipString() }  // table oid, oid, tag, description
            _ = try int()  // section
            for _ in 0..<5 { try skipString() }  // definition, drop, copy, schema, tablespace
            if minor >= 14 { try skipString() }  // table access method
            for _ in 0..<2 { try skipString() }  // owner, "with oids"
            while try skipString() {}  // dependencies, up to a null
            let fieldPosition = position
            let state = try byte()
            try skip(UInt64(layout.offsetSize))
            if state == Self.offsetNotSet {
                guard layout.unset.count < Self.maximumUnsetEntries else { throw NotUnderstood() }
                layout.unset.append((dumpID, fieldPosition))
            }
        }
        var wanted = Set(layout.unset.map(\.dumpID))
        // The data blocks follow, each its type, its entry's id and its content in length-prefixed pieces.
        while !wanted.isEmpty, let type = try byteOrEnd() {
            let start = position - 1
            let dumpID = try int()
            switch type {
            case Self.blockData:
                try skipPieces()
            case Self.blockLargeObjects:
                while try int() != 0 { try skipPieces() }  // each large object: its oid, then its pieces
            default:
                throw NotUnderstood()
            }
            // The first block of an id is the one pg_restore reads forward to; a later one is never restored.
            if wanted.remove(dumpID) != nil { layout.blocks[dumpID] = start }
        }
        return layout
    }

    private mutating func skipPieces() throws {
        while true {
            let length = try int()
            guard length >= 0 else { throw NotUnderstood() }
            if length == 0 { return }
            try skip(UInt64(length))
        }
    }

    /// `ReadInt`: a sign byte, then `intSize` bytes, least significant
    /// first. The dump may come from an upload: a value past 2^48 is not one
    /// pg_dump writes, and is refused rather than trusted.
    private mutating func int() throws -> Int {
        let negative = try byte() != 0
        var value: UInt64 = 0
        for index in 0..<intSize { value |= UInt64(try byte()) << (8 * index) }
        guard value < 1 << 48 else { throw NotUnderstood() }
        return negative ? -Int(value) : Int(value)
    }

    /// `ReadStr` without keeping it: a length (negative for null), then the
    /// bytes; returns whether it was a string rather than null.
    @discardableResult
    private mutating func skipString() throws -> Bool {
        let length = try int()
        if length > 0 { try skip(UInt64(length)) }
        return length >= 0
    }

    private mutating func bytes(_ count: Int) throws -> [UInt8] {
        try (0..<count).map { _ in try byte() }
    }

    private mutating func byte() throws -> UInt8 {
        guard let value = try byteOrEnd() else { throw NotUnderstood() }
        return value
    }

    private mutating func byteOrEnd() throws -> UInt8? {
        if position >= bufferStart + UInt64(bufferCount) {
            if interruption?.isSet == true { throw BlobStoreError.interrupted(path: "the dump's data offsets") }
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(position)) }
            guard count >= 0 else { throw NotUnderstood() }
            if count == 0 { return nil }
            (bufferStart, bufferCount) = (position, count)
        }
        defer { position += 1 }
        return buffer[Int(position - bufferStart)]
    }

    private mutating func skip(_ count: UInt64) throws {
        position += count
    }
}
