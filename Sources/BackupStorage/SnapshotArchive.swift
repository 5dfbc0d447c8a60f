import BackupRules
import CArchive
#if canImport(Glibc)
import Glibc
#endif


/// Writing an archive: its layout, `.metadata` and the gzip tar.
extension SnapshotArchive {
    /// Member path of the dump.
    public static let dumpPath = "db/db.backup"

    /// The `.metadata` document, with the SHA-256 of every member added.
    public func metadataDocument() throws(FileStoreLayout.InvalidKey) -> [UInt8] {
        var entries = metadata
        entries["sha256:" + Self.dumpPath] = dump.sha256.hex
        for file in files { entries["sha256:" + (try Self.treePath(file.key))] = file.blob.hash.hex }
        let body = entries.sorted { $0.key < $1.key }.map { "  \(jsonString($0.key)): \(jsonString($0.value))" }
        return Array(("{\n" + body.joined(separator: ",\n") + "\n}\n").utf8)
    }

    static func treePath(_ key: String) throws(FileStoreLayout.InvalidKey) -> String {
        "tree/" + (try FileStoreLayout.relativePath(forKey: key))
    }

    /// Writes the archive to `path` (which must not exist; it is removed
    /// again if writing fails, or grows past `limit` bytes) and returns its
    /// size and SHA-256. `progress` hears the bytes of member content written so far.
    public func write(to path: String, from store: any BlobStore, gzipLevel: Int = 6, limit: UInt64 = .max,
                      interruption: Interruption? = nil, progress: (UInt64) -> Void = { _ in }) throws -> (size: UInt64, sha256: ContentHash) {
        let output = try ArchiveOutput(path: path, limit: limit)
        let gzip = GzipMembers(level: gzipLevel) { try output.write($0) }
        do {
            let archive = archive_write_new()!
            defer { archive_write_free(archive) }
            try check(archive, archive_write_set_format_pax_restricted(archive))
            try check(archive, archive_write_add_filter_none(archive))
            // No padding to 10 KiB blocks past the end: the file ends where the tar does.
            try check(archive, archive_write_set_bytes_in_last_block(archive, 1))
            let context = Unmanaged.passUnretained(gzip).toOpaque()
            try check(archive, archive_write_open2(archive, context, nil, { _, context, buffer, length in
                let gzip = Unmanaged<GzipMembers>.fromOpaque(context!).takeUnretainedValue()
                do {
                    try gzip.write(UnsafeRawBufferPointer(start: buffer, count: length))
                    return length
                } catch {
                    gzip.failure = error
                    return -1
                }
            }, nil, nil))

            var written: UInt64 = 0
            let document = try metadataDocument()
            try addMember(archive, ".metadata", size: UInt64(document.count)) { consume in
                try document.withUnsafeBytes { try consume($0) }
            }
            // The dump (no blob: its chunks) first, then every document.
            let members = [(Self.dumpPath, StoredBlob?.none, dump.size)] + (try files.map { (try Self.treePath($0.key), $0.blob, $0.blob.size) })
            for (memberPath, blob, size) in members {
                try addMember(archive, memberPath, size: size) { consume in
                    let counted: (UnsafeRawBufferPointer) throws -> Void = { chunk in
                        try consume(chunk)
                        written += UInt64(chunk.count)
                        progress(written)
                    }
                    if let blob {
                        _ = try store.read(blob.hash, interruption: interruption, counted)
                    } else {
                        try dump.read(from: store, interruption: interruption, counted)
                    }
                }
            }
            try check(archive, archive_write_close(archive))
            try gzip.finish()
            return try output.finish()
        } catch {
            output.abandon()
            // A failed write of the output (a full disk, say) reaches libarchive as -1; its cause is kept here.
            throw gzip.failure ?? error
        }
    }

    /// Writes the dump alone (a database-only download) to `path`, as
    /// `write` does the whole archive, and returns its size and SHA-256.
    public func writeDump(to path: String, from store: any BlobStore, limit: UInt64 = .max, interruption: Interruption? = nil,
                          progress: (UInt64) -> Void = { _ in }) throws -> (size: UInt64, sha256: ContentHash) {
        let output = try ArchiveOutput(path: path, limit: limit)
        do {
            var written: UInt64 = 0
            try dump.read(from: store, interruption: interruption) { chunk in
                try output.write(chunk)
                written += UInt64(chunk.count)
                progress(written)
            }
            return try output.finish()
        } catch {
            output.abandon()
            throw error
        }
    }

    /// The file name of a download: `files_and_database-SNAPSHOT8-YYYYMMDDhhmm.tar.gz`,
    /// or `database-….backup` for the dump alone, the time the snapshot's in UTC.
    public static func downloadName(snapshotID: String, createdUnixMS: Int64, databaseOnly: Bool) -> String {
        let stamp = utcTime(createdUnixMS / 1000, format: "%Y%m%d%H%M")
        let short = snapshotID.prefix(8)
        return databaseOnly ? "database-\(short)-\(stamp).backup" : "files_and_database-\(short)-\(stamp).tar.gz"
    }

    private func addMember(_ archive: OpaquePointer, _ path: String, size: UInt64,
                           _ content: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        let entry = archive_entry_new()!
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname(entry, path)
        archive_entry_set_size(entry, la_int64_t(size))
        archive_entry_set_filetype(entry, 0o100000)  // AE_IFREG (S_IFREG), a macro Swift does not import
        archive_entry_set_perm(entry, 0o644)
        archive_entry_set_mtime(entry, time_t(modified), 0)
        try check(archive, archive_write_header(archive, entry))
        var remaining = size
        try content { chunk in
            // A blob that grew since it was recorded would overrun its header: the size was promised.
            guard UInt64(chunk.count) <= remaining else { throw ArchiveError.write("\(path) is longer than its recorded \(size) bytes") }
            remaining -= UInt64(chunk.count)
            let written = archive_write_data(archive, chunk.baseAddress, chunk.count)
            guard written == chunk.count else { throw ArchiveError.write(Self.errorText(archive, written)) }
        }
        guard remaining == 0 else { throw ArchiveError.write("\(path) is shorter than its recorded \(size) bytes") }
        try check(archive, archive_write_finish_entry(archive))
    }

    private func check(_ archive: OpaquePointer, _ status: Int32) throws {
        guard status == ARCHIVE_OK else { throw ArchiveError.write(Self.errorText(archive, status)) }
    }

    /// libarchive's message for its last failure (there is none when the output callback refused), or the status.
    private static func errorText(_ archive: OpaquePointer, _ status: some BinaryInteger) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "libarchive status \(status)"
    }
}

public enum ArchiveError: Error, CustomStringConvertible {
    case write(String)

    public var description: String {
        switch self {
        case .write(let detail): "cannot write the archive: \(detail)"
        }
    }
}

/// The file an archive is written to, hashed as it is written, never past its limit.
private final class ArchiveOutput {
    private let path: String
    private let fd: Int32
    private let limit: UInt64
    private let hasher = SHA256Hasher()
    private var size: UInt64 = 0

    init(path: String, limit: UInt64) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
        self.path = path
        self.limit = limit
    }

    /// Writes all of `chunk`, or throws why it could not.
    func write(_ chunk: UnsafeRawBufferPointer) throws {
        guard let base = chunk.baseAddress, chunk.count > 0 else { return }
        guard UInt64(chunk.count) <= limit - size else { throw ArchiveError.write("it grew past the \(limit) bytes reserved for it") }
        var done = 0
        while done < chunk.count {
            let count = Glibc.write(fd, base + done, chunk.count - done)
            if count < 0 {
                if errno == EINTR { continue }
                throw BlobStoreError.cannotWrite(path: path, errno: errno)
            }
            done += count
        }
        hasher.update(chunk)
        size += UInt64(chunk.count)
    }

    func finish() throws -> (size: UInt64, sha256: ContentHash) {
        guard fsync(fd) == 0, close(fd) == 0 else {
            abandon()
            throw BlobStoreError.cannotWrite(path: path, errno: errno)
        }
        return (size, hasher.finish())
    }

    func abandon() {
        close(fd)
        unlink(path)
    }
}

/// Unix seconds as UTC text in a `strftime` format (C locale names).
public func utcTime(_ unix: Int64, format: String) -> String {
    var seconds = time_t(unix)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    var text = [CChar](repeating: 0, count: 64)
    let length = strftime(&text, text.count, format, &parts)
    return String(decoding: text.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A JSON string literal: quotes, backslashes and control characters
/// escaped (and U+2028, U+2029, which some readers take for line ends).
public func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) || scalar == "\u{2028}" || scalar == "\u{2029}":
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
