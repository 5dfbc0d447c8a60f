@testable import BackupCatalog
import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// What a download may take in the archive cache, against the archives the
/// writer makes at the edge of the key rules.
@Suite struct ArchiveReservationTests {
    /// Helper finding: 4,000 incompressible documents with 200-character keys
    /// made an archive 2.1 % over its reservation (a pax header, a tar header
    /// and padding per member, stored raw, and their `.metadata` lines), and
    /// the job found out only once it was written whole.
    @Test func documentsWithTheLongestKeysFitTheirReservationAndAnArchivePastItStopsAndGoes() throws {
        let scratch = try ScratchDirectory("reservation")
        defer { scratch.remove() }
        let store = try LocalBlobStore(root: scratch.path + "/blobs")
        try Data("PGDMP a custom-format dump".utf8).write(to: URL(fileURLWithPath: scratch.path + "/dump"))
        let dump = try DumpChunkWriter(store: store).store(file: scratch.path + "/dump", known: [:])
        let keyTail = String(repeating: "k", count: 196)
        let files = try (0..<400).map { index -> (key: String, blob: StoredBlob) in
            let path = scratch.path + "/document"
            try Data(Secure.randomBytes(24_577)).write(to: URL(fileURLWithPath: path))
            return (String(format: "%04d", index) + keyTail, try store.put(contentsOf: path))
        }
        let archive = SnapshotArchive(metadata: ["snapshotId": "0d3e301f"], dump: dump, files: files, modified: 1_764_000_000)
        let reservation = archiveReservation(databaseBytes: dump.size, filesBytes: files.reduce(0) { $0 + $1.blob.size },
                                             fileCount: UInt64(files.count), databaseOnly: false)
        let written = try archive.write(to: scratch.path + "/fits.tar.gz", from: store, limit: reservation)
        #expect(written.size <= reservation)

        // Given less room than it needs, the writer stops there and leaves nothing.
        let tooSmall = scratch.path + "/too-small.tar.gz"
        #expect { try archive.write(to: tooSmall, from: store, limit: written.size / 2) } throws: { error in
            "\(error)".contains("grew past the \(written.size / 2) bytes reserved for it")
        }
        #expect(!FileManager.default.fileExists(atPath: tooSmall))
    }
}
