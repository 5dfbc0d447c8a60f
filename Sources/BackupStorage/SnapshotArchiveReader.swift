import BackupRules
import CArchive
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Reads a snapshot archive made elsewhere (an upload) as one stream through
/// libarchive, checking every rule of the format as it goes and handing
/// each member's content on in chunks, so nothing is held whole in memory
/// and a decompression bomb stops at its limit, not at the end of the disk.
/// Anything that breaks a rule ends the read with `ArchiveRejection`, whose
/// message names the problem; what the member sinks got by then is the
/// caller's to throw away.
public struct SnapshotArchiveReader: Sendable {
    /// What an archive may hold, checked while reading.
    public struct Limits: Sendable {
        /// The largest one member may be (its header says, before a byte is read).
        public var memberBytes: UInt64 = 100 << 30
        public var members = 1_000_000
        /// All members together, as they expand.
        public var expandedBytes: UInt64 = 500 << 30
        /// Expanded bytes per compressed byte, once past `ratioGrace` expanded bytes.
        public var expansionRatio: UInt64 = 200
        public var ratioGrace: UInt64 = 64 << 20
        public var metadataBytes = 1 << 20

        public init() {}

        public init(members: Int) {
            self.members = members
        }
    }

    /// Which part of a snapshot a member is.
    public enum Member: Sendable, Hashable {
        case dump
        case document(key: String)
    }

    /// What a valid archive held.
    public struct Contents: Sendable {
        public var metadata: [String: String]
        public var dump: (size: UInt64, sha256: ContentHash)
        public var documents: [(key: String, size: UInt64, sha256: ContentHash)]
    }

    public let limits: Limits

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Reads the archive at `path`. `open` is asked for a sink for the dump
    /// and for each document, given its size and, when `.metadata` came
    /// first and states one, the SHA-256 it must have; a nil sink lets the
    /// content pass, hashed only. `.metadata` is read here. Every member is
    /// hashed as it passes, and checked against the `sha256:PATH` keys of
    /// `.metadata` before `read` returns. `progress` hears how many bytes of
    /// the archive file have been read so far.
    public func read(_ path: String, interruption: Interruption? = nil, progress: ((UInt64) -> Void)? = nil,
                     open: (_ member: Member, _ size: UInt64, _ stated: ContentHash?) throws -> (any ArchiveMemberSink)?) throws -> Contents {
        try read(opening: { archive_read_open_filename($0, path, 1 << 16) }, failure: { nil },
                 interruption: interruption, progress: progress, open: open)
    }

    /// Reads the archive whose bytes `source` gives, as `read(_:)` reads a
    /// file. A failure of the source (a blob missing or corrupt, a store
    /// that cannot be reached) ends the read with that failure, not as a
    /// corrupt archive.
    public func read(from source: any ArchiveByteSource, interruption: Interruption? = nil, progress: ((UInt64) -> Void)? = nil,
                     open: (_ member: Member, _ size: UInt64, _ stated: ContentHash?) throws -> (any ArchiveMemberSink)?) throws -> Contents {
        let input = SourceInput(source)
        return try withExtendedLifetime(input) {
            try read(opening: { archive in
                archive_read_open(archive, Unmanaged.passUnretained(input).toOpaque(), nil, { _, context, buffer in
                    let input = Unmanaged<SourceInput>.fromOpaque(context!).takeUnretainedValue()
                    do {
                        let bytes = try input.source.nextBytes()
                        buffer?.pointee = bytes.baseAddress.map { UnsafeRawPointer($0) }
                        return la_ssize_t(bytes.count)
                    } catch {
                        input.failure = error
                        return -1
                    }
                }, nil)
            }, failure: { input.failure }, interruption: interruption, progress: progress, open: open)
        }
    }

    private func read(opening openArchive: (OpaquePointer) -> Int32, failure sourceFailure: () -> (any Error)?, interruption: Interruption?,
                      progress: ((UInt64) -> Void)?,
                      open: (_ member: Member, _ size: UInt64, _ stated: ContentHash?) throws -> (any ArchiveMemberSink)?) throws -> Contents {
        guard let archive = archive_read_new() else { throw ArchiveRejection("cannot start reading the archive") }
        defer { archive_read_free(archive) }
        archive_read_support_filter_gzip(archive)
        archive_read_support_format_tar(archive)
        /// What ended libarchive's read: the source's failure, else a corrupt archive.
        func unreadable() -> any Error {
            sourceFailure() ?? ArchiveRejection("the archive is truncated or corrupt: \(Self.message(archive))")
        }
        guard openArchive(archive) == ARCHIVE_OK else { throw unreadable() }
        var metadata: [String: String]?
        var dump: (size: UInt64, sha256: ContentHash)?
        var documents: [(key: String, size: UInt64, sha256: ContentHash)] = []
        // Names by their SHA-256 (32 bytes held inline), not their text: half a million of them in a few tens of MiB.
        var seen = Set<ContentHash>()
        // Members read before `.metadata` are checked against it at the end: the dump, and the first documents.
        var dumpBeforeMetadata = false
        var documentsBeforeMetadata = 0
        var expanded: UInt64 = 0
        var entry: OpaquePointer?
        while true {
            let status = archive_read_next_header(archive, &entry)
            if status == ARCHIVE_EOF { break }
            guard status == ARCHIVE_OK || status == ARCHIVE_WARN, let entry else { throw unreadable() }
            guard archive_filter_code(archive, 0) == ARCHIVE_FILTER_GZIP else {
                throw ArchiveRejection("the archive is not gzip-compressed (a snapshot archive is a .tar.gz)")
            }
            let raw = archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
            let name = try Self.memberName(raw)
            let type = archive_entry_filetype(entry) & 0o170000
            if archive_entry_hardlink(entry) != nil {
                throw ArchiveRejection("member \(Self.quoted(raw)) is a hard link; every member must be a regular file")
            }
            if type == 0o040000 {
                guard Self.isFolder(name) else { throw ArchiveRejection("folder \(Self.quoted(name)) is not one a snapshot has") }
                continue
            }
            guard type == 0o100000 else {
                throw ArchiveRejection("member \(Self.quoted(raw)) is a \(Self.kind(type)); every member must be a regular file")
            }
            guard seen.insert(ContentHash.of(name.utf8)).inserted else { throw ArchiveRejection("member \(Self.quoted(raw)) appears twice") }
            guard seen.count <= limits.members else {
                throw ArchiveRejection("the archive has more than \(limits.members) members")
            }
            let size = UInt64(max(0, archive_entry_size(entry)))
            guard size <= limits.memberBytes else {
                throw ArchiveRejection("member \(Self.quoted(raw)) is \(size) bytes, over the limit of \(limits.memberBytes)")
            }
            let member: Member?
            switch name {
            case ".metadata":
                guard size <= limits.metadataBytes else {
                    throw ArchiveRejection(".metadata is \(size) bytes, over the limit of \(limits.metadataBytes)")
                }
                member = nil
            case SnapshotArchive.dumpPath:
                member = .dump
            default:
                member = .document(key: try Self.documentKey(name, raw: raw))
            }
            var document: [UInt8] = []
            let sink = try member.flatMap { try open($0, size, metadata?["sha256:" + name].flatMap(ContentHash.init(hex:))) }
            let hasher = SHA256Hasher()
            var read: UInt64 = 0
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                if interruption?.isSet == true { throw CancellationError() }
                let count = buffer.withUnsafeMutableBytes { archive_read_data(archive, $0.baseAddress, $0.count) }
                guard count >= 0 else { throw unreadable() }
                if count == 0 { break }
                read += UInt64(count)
                expanded += UInt64(count)
                guard read <= size else { throw ArchiveRejection("member \(Self.quoted(raw)) is longer than its header says") }
                let compressed = UInt64(max(0, archive_filter_bytes(archive, -1)))
                try checkExpansion(expanded, compressed: compressed)
                progress?(compressed)
                try buffer.withUnsafeBytes { all in
                    let chunk = UnsafeRawBufferPointer(rebasing: all.prefix(count))
                    hasher.update(chunk)
                    if member == nil { document += chunk } else { try sink?.write(chunk) }
                }
            }
            guard read == size else { throw ArchiveRejection("member \(Self.quoted(raw)) is shorter than its header says") }
            let hash = hasher.finish()
            try sink?.end(sha256: hash)
            if let metadata { try Self.check(name, hash, against: metadata) }
            switch member {
            case nil:
                let parsed = try Self.parseMetadata(document)
                try Self.check(name, hash, against: parsed)
                metadata = parsed
            case .dump:
                dump = (size, hash)
                dumpBeforeMetadata = metadata == nil
            case .document(let key):
                documents.append((key, size, hash))
                if metadata == nil { documentsBeforeMetadata = documents.count }
            }
        }
        guard let metadata else { throw ArchiveRejection("the archive has no .metadata") }
        guard let dump else { throw ArchiveRejection("the archive has no \(SnapshotArchive.dumpPath)") }
        if dumpBeforeMetadata { try Self.check(SnapshotArchive.dumpPath, dump.sha256, against: metadata) }
        for document in documents.prefix(documentsBeforeMetadata) {
            try Self.check("tree/" + FileStoreLayout.relativePath(forKey: document.key), document.sha256, against: metadata)
        }
        return Contents(metadata: metadata, dump: dump, documents: documents)
    }

    /// A member's hash against the one `.metadata` states for it, if any.
    private static func check(_ name: String, _ hash: ContentHash, against metadata: [String: String]) throws {
        guard let stated = metadata["sha256:" + name] else { return }
        guard let statedHash = ContentHash(hex: stated) else {
            throw ArchiveRejection(".metadata states \(Self.quoted(stated)) as the SHA-256 of member \(name), "
                                   + "which is not 64 lowercase hex digits")
        }
        if statedHash != hash {
            throw ArchiveRejection("member \(name) has SHA-256 \(hash.hex), but .metadata says \(Self.quoted(stated))")
        }
    }

    private func checkExpansion(_ expanded: UInt64, compressed: UInt64) throws {
        guard expanded <= limits.expandedBytes else {
            throw ArchiveRejection("the archive expands past the limit of \(limits.expandedBytes) bytes")
        }
        guard expanded <= limits.ratioGrace || expanded / max(compressed, 1) <= limits.expansionRatio else {
            throw ArchiveRejection("the archive expands more than \(limits.expansionRatio) times its compressed size "
                                   + "(\(expanded) bytes from \(compressed)): refused as a decompression bomb")
        }
    }

    /// A member's name without a leading `./`; absolute names and `..` are refused.
    static func memberName(_ raw: String) throws -> String {
        guard !raw.hasPrefix("/") else { throw ArchiveRejection("member \(quoted(raw)) has an absolute name") }
        var parts = raw.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard !parts.contains("..") else { throw ArchiveRejection("member \(quoted(raw)) climbs out of the archive with ..") }
        while parts.first == "." { parts.removeFirst() }
        guard !parts.contains("."), !parts.isEmpty || raw.hasPrefix(".") else {
            throw ArchiveRejection("member \(quoted(raw)) has no usable name")
        }
        return parts.joined(separator: "/")
    }

    /// `tree/xx/yy/KEY`, its folders the key's characters 1-2 and 3-4.
    static func documentKey(_ name: String, raw: String) throws -> String {
        let parts = name.split(separator: "/").map(String.init)
        guard parts.count == 4, parts[0] == "tree" else {
            throw ArchiveRejection("member \(quoted(raw)) is not .metadata, \(SnapshotArchive.dumpPath) or tree/xx/yy/KEY")
        }
        guard (try? FileStoreLayout.components(forKey: parts[3])) == Array(parts[1...]) else {
            throw ArchiveRejection("member \(quoted(raw)) is in the wrong folders: a document KEY goes in tree/<its characters 1-2>/<3-4>/KEY")
        }
        return parts[3]
    }

    /// Folders a snapshot's members lie in: the top, db, tree and its two levels.
    static func isFolder(_ name: String) -> Bool {
        let parts = name.split(separator: "/")
        return name.isEmpty || name == "db" || (parts.first == "tree" && parts.count <= 3 && parts.dropFirst().allSatisfy { $0.count == 2 })
    }

    static func parseMetadata(_ bytes: [UInt8]) throws -> [String: String] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ArchiveRejection(".metadata is not a JSON object")
        }
        var metadata: [String: String] = [:]
        for (key, value) in object {
            guard let text = value as? String else { throw ArchiveRejection(".metadata key \(quoted(key)) is not a string") }
            metadata[key] = text
        }
        return metadata
    }

    static func kind(_ type: mode_t) -> String {
        switch type {
        case 0o120000: "symbolic link"
        case 0o020000: "character device"
        case 0o060000: "block device"
        case 0o010000: "FIFO"
        case 0o140000: "socket"
        default: "file of an unknown kind"
        }
    }

    /// A name from the archive as a message may show it.
    static func quoted(_ name: String) -> String {
        quotedPrintable(name, longest: 200)
    }

    static func message(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "libarchive status \(archive_errno(archive))"
    }
}

/// Where one member's content goes as the reader passes it on.
public protocol ArchiveMemberSink: AnyObject {
    func write(_ chunk: UnsafeRawBufferPointer) throws
    /// The member was read whole; `sha256` is what was read.
    func end(sha256: ContentHash) throws
}

/// Why an archive is not a valid snapshot; the message names the problem.
public struct ArchiveRejection: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where an archive's bytes come from when they are not one local file.
public protocol ArchiveByteSource: AnyObject {
    /// The next bytes, valid until the next call; empty at the end.
    func nextBytes() throws -> UnsafeRawBufferPointer
}

/// A source as libarchive's read callback sees it, with the failure that
/// callback could only report as -1.
private final class SourceInput {
    let source: any ArchiveByteSource
    var failure: (any Error)?

    init(_ source: any ArchiveByteSource) {
        self.source = source
    }
}
