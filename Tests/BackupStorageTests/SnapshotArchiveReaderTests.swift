import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// Reading archives made elsewhere: a valid one by the public format's
/// recipe (`tar czf`), and every way one can break the format, each refused
/// naming the problem.
@Suite struct SnapshotArchiveReaderTests {
    static let key = "0d3e301f-5551-46f8-ad44-8de2be084c95"
    static let document = "tree/0d/3e/" + key

    private static let metadata = #"('.metadata', 'file', '{"modelVersion": "1.0.0"}')"#
    private static let dump = "('db/db.backup', 'file', 'PGDMP')"
    private static let file = "('\(document)', 'file', 'an invoice')"

    /// Reads an archive, collecting what the sinks got.
    private func read(_ path: String, limits: SnapshotArchiveReader.Limits = .init()) throws
        -> (SnapshotArchiveReader.Contents, [SnapshotArchiveReader.Member: [UInt8]]) {
        let received = ReceivedMembers()
        let contents = try SnapshotArchiveReader(limits: limits).read(path) { member, _, _ in
            MemberCollector(member, into: received)
        }
        return (contents, received.members)
    }

    @Test func anArchiveMadeByHandTheWayTheFormatSaysIsRead() async throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        let folder = scratch.path + "/snapshot"
        try FileManager.default.createDirectory(atPath: folder + "/db", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: folder + "/tree/0d/3e", withIntermediateDirectories: true)
        try #"{"modelVersion": "2.1.0", "snapshotId": "x"}"#.write(toFile: folder + "/.metadata", atomically: true, encoding: .utf8)
        try "PGDMP dump".write(toFile: folder + "/db/db.backup", atomically: true, encoding: .utf8)
        try "an invoice".write(toFile: folder + "/" + Self.document, atomically: true, encoding: .utf8)
        let archive = scratch.path + "/by-hand.tar.gz"
        #expect(try await runCommand("/bin/tar", ["czf", archive, "-C", folder, "."]).status == 0)
        let (contents, members) = try read(archive)
        #expect(contents.metadata["modelVersion"] == "2.1.0")
        #expect(contents.dump.size == 10 && contents.dump.sha256 == ContentHash.of(Array("PGDMP dump".utf8)))
        #expect(contents.documents.map(\.key) == [Self.key])
        #expect(members[.document(key: Self.key)] == Array("an invoice".utf8) && members[.dump] == Array("PGDMP dump".utf8))
    }

    @Test func anArchiveThisServerWroteIsReadAndItsChecksumsHold() throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        let store = try LocalBlobStore(root: scratch.path + "/blobs")
        try Data("PGDMP".utf8).write(to: URL(fileURLWithPath: scratch.path + "/d"))
        try Data(Secure.randomBytes(300_000)).write(to: URL(fileURLWithPath: scratch.path + "/f"))
        let archive = SnapshotArchive(metadata: ["modelVersion": "3"], dump: .blob(try store.put(contentsOf: scratch.path + "/d")),
                                      files: [(Self.key, try store.put(contentsOf: scratch.path + "/f"))], modified: 0)
        _ = try archive.write(to: scratch.path + "/a.tar.gz", from: store)
        let (contents, _) = try read(scratch.path + "/a.tar.gz")
        #expect(contents.documents.first?.sha256 == archive.files[0].blob.hash && contents.dump.sha256 == archive.dump.sha256)
        #expect(contents.metadata["sha256:db/db.backup"] == archive.dump.sha256.hex)
    }

    @Test func aMemberWhoseStatedHashIsKnownMayPassUnwrittenAndIsStillChecked() async throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        let invoice = ContentHash.of(Array("an invoice".utf8)).hex
        let stating = { (hash: String) in
            #"[('.metadata', 'file', '{"sha256:\#(Self.document)": "\#(hash)"}'), "# + Self.dump + ", " + Self.file + "]"
        }
        var offered: [SnapshotArchiveReader.Member: ContentHash?] = [:]
        let contents = try SnapshotArchiveReader().read(try await craftArchive(in: scratch, stating(invoice))) { member, _, stated in
            offered[member] = stated
            return nil
        }
        #expect(offered[.document(key: Self.key)] == ContentHash(hex: invoice) && offered[.dump] == .some(nil))
        #expect(contents.documents.first?.sha256.hex == invoice)
        let lying = try await craftArchive(in: scratch, stating(String(repeating: "a", count: 64)))
        #expect { _ = try SnapshotArchiveReader().read(lying) { _, _, _ in nil } } throws: {
            ($0 as? ArchiveRejection)?.description.contains("but .metadata says \"aaaa") == true
        }
    }

    /// Each broken archive and the words its refusal must contain.
    static let broken: [(String, String, String)] = [
        ("missing .metadata", "[\(dump), \(file)]", "the archive has no .metadata"),
        (".metadata not JSON", "[('.metadata', 'file', 'not json'), \(dump)]", ".metadata is not a JSON object"),
        (".metadata with a number", #"[('.metadata', 'file', '{"a": 1}'), "# + dump + "]", ".metadata key \"a\" is not a string"),
        ("missing dump", "[\(metadata), \(file)]", "the archive has no db/db.backup"),
        ("climbing name", "[\(metadata), \(dump), ('tree/../../etc/passwd', 'file', 'x')]", "climbs out of the archive with .."),
        ("absolute name", "[\(metadata), \(dump), ('/etc/cron.d/x', 'file', 'x')]", "has an absolute name"),
        ("symbolic link", "[\(metadata), \(dump), ('\(document)', 'symlink', '/etc/shadow')]", "is a symbolic link"),
        ("hard link", "[\(metadata), \(dump), ('\(document)', 'hardlink', 'db/db.backup')]", "is a hard link"),
        ("device node", "[\(metadata), \(dump), ('\(document)', 'chardev', '')]", "is a character device"),
        ("duplicate member", "[\(metadata), \(dump), \(file), \(file)]", "appears twice"),
        ("wrong folders", "[\(metadata), \(dump), ('tree/ab/cd/\(key)', 'file', 'x')]", "is in the wrong folders"),
        ("unknown member", "[\(metadata), \(dump), ('notes.txt', 'file', 'x')]", "is not .metadata, db/db.backup or tree/xx/yy/KEY"),
        ("unknown folder", "[('etc', 'dir', ''), \(metadata), \(dump)]", "folder \"etc\" is not one a snapshot has"),
        ("checksum mismatch", #"[('.metadata', 'file', '{"sha256:db/db.backup": "\#(String(repeating: "0", count: 64))"}'), "# + dump + "]",
         "has SHA-256 \(ContentHash.of(Array("PGDMP".utf8)).hex), but .metadata says \"0000"),
        // Helper finding: uppercase hex was refused as a mismatch of what read as the same digest.
        ("uppercase checksum, stated after the dump", "[\(dump), ('.metadata', 'file', '{\"sha256:db/db.backup\": \""
            + ContentHash.of(Array("PGDMP".utf8)).hex.uppercased() + "\"}')]", "which is not 64 lowercase hex digits"),
    ]

    @Test(arguments: broken)
    func aBrokenArchiveIsRefusedNamingTheProblem(what: String, members: String, reason: String) async throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        let path = try await craftArchive(in: scratch, members)
        #expect {
            _ = try read(path)
        } throws: { error in
            (error as? ArchiveRejection)?.description.contains(reason) == true
        }
    }

    @Test func notGzipTruncatedGzipAndTruncatedTarAreRefused() async throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        let plainTar = try await craftArchive(in: scratch, "[\(Self.metadata), \(Self.dump)]", mode: "w")
        let good = try await craftArchive(in: scratch, "[\(Self.metadata), \(Self.dump), ('\(Self.document)', 'file', b'\\x01' * 200000)]")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        let cutGzip = scratch.path + "/cut.tar.gz"
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cutGzip))
        // A whole gzip stream of a tar cut short.
        let tarBytes = try Data(contentsOf: URL(fileURLWithPath: plainTar))
        try tarBytes.prefix(700).write(to: URL(fileURLWithPath: scratch.path + "/cut.tar"))
        #expect(try await runCommand("/bin/gzip", ["-kf", scratch.path + "/cut.tar"]).status == 0)
        let garbage = scratch.path + "/garbage.tar.gz"
        try Data("this is not an archive at all".utf8).write(to: URL(fileURLWithPath: garbage))
        for (path, reason) in [(plainTar, "not gzip-compressed"), (cutGzip, "truncated or corrupt"),
                               (scratch.path + "/cut.tar.gz", "truncated or corrupt"), (garbage, "")] {
            #expect(throws: ArchiveRejection.self, "\(path)") { _ = try read(path) }
            if !reason.isEmpty {
                #expect { _ = try read(path) } throws: { ($0 as? ArchiveRejection)?.description.contains(reason) == true }
            }
        }
    }

    @Test func aGzipBombStopsAtTheLimitNotAtTheEnd() async throws {
        let scratch = try ScratchDirectory("reader")
        defer { scratch.remove() }
        // 64 MiB of zeros: about 64 KiB compressed.
        let bomb = try await craftArchive(in: scratch, "[\(Self.metadata), \(Self.dump), ('\(Self.document)', 'file', bytes(64 << 20))]")
        var ratioLimited = SnapshotArchiveReader.Limits()
        ratioLimited.ratioGrace = 1 << 20
        let sunk = ReceivedMembers()
        #expect {
            _ = try SnapshotArchiveReader(limits: ratioLimited).read(bomb) { member, _, _ in MemberCollector(member, into: sunk) }
        } throws: { ($0 as? ArchiveRejection)?.description.contains("refused as a decompression bomb") == true }
        // It stopped early: far less than the 64 MiB reached the sink.
        #expect(sunk.total < 8 << 20)
        var sizeLimited = SnapshotArchiveReader.Limits()
        sizeLimited.expandedBytes = 10 << 20
        #expect { _ = try read(bomb, limits: sizeLimited) } throws: {
            ($0 as? ArchiveRejection)?.description == "the archive expands past the limit of 10485760 bytes"
        }
        var memberLimited = SnapshotArchiveReader.Limits()
        memberLimited.memberBytes = 1 << 20
        #expect { _ = try read(bomb, limits: memberLimited) } throws: {
            ($0 as? ArchiveRejection)?.description.contains("is 67108864 bytes, over the limit of 1048576") == true
        }
    }
}

/// What the member sinks of a read received.
private final class ReceivedMembers: @unchecked Sendable {
    private(set) var members: [SnapshotArchiveReader.Member: [UInt8]] = [:]
    private(set) var total = 0

    func add(_ member: SnapshotArchiveReader.Member, _ chunk: UnsafeRawBufferPointer) {
        members[member, default: []] += chunk
        total += chunk.count
    }
}

/// A sink that hands one member's chunks to `ReceivedMembers`.
private final class MemberCollector: ArchiveMemberSink {
    private let member: SnapshotArchiveReader.Member
    private let received: ReceivedMembers

    init(_ member: SnapshotArchiveReader.Member, into received: ReceivedMembers) {
        self.member = member
        self.received = received
    }

    func write(_ chunk: UnsafeRawBufferPointer) { received.add(member, chunk) }
    func end(sha256: ContentHash) {}
}
