import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// The full snapshot archive, read back with the tools a user has: `tar`
/// and a JSON parser.
@Suite struct SnapshotArchiveTests {
    /// A blob store with a dump and three documents, one of them 3 MiB of
    /// random bytes (several chunks, incompressible).
    private func snapshot(_ scratch: ScratchDirectory) throws -> (LocalBlobStore, SnapshotArchive, [String: [UInt8]]) {
        let store = try LocalBlobStore(root: scratch.path + "/blobs")
        var contents: [String: [UInt8]] = [
            "0d3e301f-5551-46f8-ad44-8de2be084c95": Array("an invoice".utf8),
            "a1b2c3d4-0000-4000-8000-000000000001": Secure.randomBytes(3 << 20),
            "ffee0011-2222-4333-8444-555566667777": [],
        ]
        func stored(_ bytes: [UInt8], _ name: String) throws -> StoredBlob {
            let path = scratch.path + "/" + name
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return try store.put(contentsOf: path)
        }
        let dumpBytes = Array("PGDMP a custom-format dump".utf8)
        try Data(dumpBytes).write(to: URL(fileURLWithPath: scratch.path + "/dump"))
        let dump = try DumpChunkWriter(store: store).store(file: scratch.path + "/dump", known: [:])
        let files = try contents.keys.sorted().map { ($0, try stored(contents[$0]!, $0)) }
        contents[SnapshotArchive.dumpPath] = dumpBytes
        let archive = SnapshotArchive(metadata: ["snapshotId": "0d3e301f", "modelVersion": "1.2.3", "note": "quote \" and\nline"],
                                      dump: dump, files: files, modified: 1_764_000_000)
        return (store, archive, contents)
    }

    @Test func tarReadsBackEveryMemberAndTheMetadataNamesTheirHashes() async throws {
        let scratch = try ScratchDirectory("archive")
        defer { scratch.remove() }
        let (store, archive, contents) = try snapshot(scratch)
        let path = scratch.path + "/snapshot.tar.gz"
        var progress: UInt64 = 0
        let (size, sha256) = try archive.write(to: path, from: store) { progress = $0 }
        let written = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(size == UInt64(written.count) && sha256 == ContentHash.of(written))
        #expect(progress == contents.values.reduce(0) { $0 + UInt64($1.count) })

        let listing = try await runCommand("/usr/bin/tar", ["-tzf", path])
        #expect(listing.status == 0, "\(listing.standardError)")
        #expect(listing.standardOutput.split(separator: "\n") == [
            ".metadata", "db/db.backup", "tree/0d/3e/0d3e301f-5551-46f8-ad44-8de2be084c95",
            "tree/a1/b2/a1b2c3d4-0000-4000-8000-000000000001", "tree/ff/ee/ffee0011-2222-4333-8444-555566667777",
        ])
        let out = scratch.path + "/out"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        #expect(try await runCommand("/usr/bin/tar", ["-xzf", path, "-C", out]).status == 0)
        for (key, bytes) in contents {
            let member = key == SnapshotArchive.dumpPath ? key : "tree/\(key.prefix(2))/\(key.dropFirst(2).prefix(2))/\(key)"
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: "\(out)/\(member)"))) == bytes, "\(member)")
        }
        let metadata = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/.metadata"))) as? [String: String])
        #expect(metadata["modelVersion"] == "1.2.3" && metadata["note"] == "quote \" and\nline")
        #expect(metadata["sha256:db/db.backup"] == archive.dump.sha256.hex)
        for (key, blob) in archive.files {
            #expect(metadata["sha256:tree/\(key.prefix(2))/\(key.dropFirst(2).prefix(2))/\(key)"] == blob.hash.hex)
        }
        // Every member is a plain file of the snapshot's time, with no owner of this machine's.
        let verbose = try await runCommand("/usr/bin/tar", ["--numeric-owner", "-tvzf", path]).standardOutput
        #expect(verbose.split(separator: "\n").allSatisfy { $0.hasPrefix("-rw-r--r-- 0/0") && $0.contains("2025-11-24") }, "\(verbose)")
    }

    @Test func aMissingOrCorruptBlobLeavesNoArchive() throws {
        let scratch = try ScratchDirectory("archive")
        defer { scratch.remove() }
        let (store, archive, _) = try snapshot(scratch)
        let big = archive.files.first { $0.blob.size == 3 << 20 }!.blob
        let blobPath = store.path(for: big.hash)

        // A byte changed on disk: found when the blob has been read, and the archive goes.
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: blobPath)))
        bytes[1000] ^= 0xff
        chmod(blobPath, 0o600)
        try Data(bytes).write(to: URL(fileURLWithPath: blobPath))
        let corrupt = scratch.path + "/corrupt.tar.gz"
        #expect { try archive.write(to: corrupt, from: store) } throws: { error in
            if case BlobStoreError.corrupt(let hash, _) = error { hash == big.hash } else { false }
        }
        #expect(!FileManager.default.fileExists(atPath: corrupt))

        try store.remove(big.hash)
        let missing = scratch.path + "/missing.tar.gz"
        #expect { try archive.write(to: missing, from: store) } throws: { error in
            if case BlobStoreError.missing(let hash) = error { hash == big.hash } else { false }
        }
        #expect(!FileManager.default.fileExists(atPath: missing))

        // A key that would climb out of tree/ is refused, and leaves nothing either.
        var climbing = archive
        climbing.files = [("../../etc", archive.files[0].1)]
        #expect(throws: FileStoreLayout.InvalidKey.self) { try climbing.write(to: scratch.path + "/climbing.tar.gz", from: store) }
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/climbing.tar.gz"))
    }
}
