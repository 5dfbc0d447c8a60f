import BackupRules
import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// Dumps as content-defined, compressed chunks: cut points, round trips,
/// sharing with an earlier dump, and damage named by chunk.
@Suite struct ChunkedDumpTests {
    /// Text that compresses, with some randomness so it is not one repeated block.
    private func compressible(_ count: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        var line = 0
        while bytes.count < count {
            bytes += Array("\(line)\torder-\(line * 7919 % 100_003)\tcustomer \(line % 977)\tshipped\t2026-11-\(line % 28 + 1)\n".utf8)
            line += 1
        }
        return Array(bytes.prefix(count))
    }

    private func withStore(_ body: (LocalBlobStore, String) throws -> Void) throws {
        let scratch = try ScratchDirectory("chunked")
        defer { scratch.remove() }
        try body(try LocalBlobStore(root: scratch.path + "/blobs"), scratch.path)
    }

    @Test func cutsFallWithinTheirBoundsAndFollowTheContentAfterAnInsertion() {
        let content = Secure.randomBytes(24 << 20)
        func cuts(_ bytes: [UInt8]) -> [Int] {
            var offsets: [Int] = []
            var start = 0
            bytes.withUnsafeBytes { all in
                while start < all.count {
                    let length = ContentDefinedChunker.cut(UnsafeRawBufferPointer(rebasing: all[start...]), atEnd: true)!
                    start += length
                    offsets.append(start)
                }
            }
            return offsets
        }
        let original = cuts(content)
        let lengths = zip(original, [0] + original).map { $0 - $1 }
        #expect(lengths.dropLast().allSatisfy { $0 >= ContentDefinedChunker.minimumSize && $0 <= ContentDefinedChunker.maximumSize })
        #expect((12...48).contains(original.count), "\(original.count) chunks of 24 MiB")
        // 100 bytes inserted near the start move only the cuts before the content resynchronizes.
        let edited = Array(content[..<1000]) + Secure.randomBytes(100) + Array(content[1000...])
        let shifted = Set(cuts(edited).map { $0 - 100 })
        #expect(Set(original).subtracting(shifted).count <= 2)
    }

    @Test func aDumpReadsBackByteForByteAndItsIncompressibleChunksAreStoredRaw() throws {
        try withStore { store, folder in
            let content = compressible(6 << 20) + Secure.randomBytes(5 << 20) + compressible(3 << 20)
            try Data(content).write(to: URL(fileURLWithPath: folder + "/dump"))
            let dump = try DumpChunkWriter(store: store).store(file: folder + "/dump", known: [:])
            guard case let .chunks(sha256, size, chunks) = dump else { Issue.record("not chunked"); return }
            #expect(sha256 == ContentHash.of(content) && size == UInt64(content.count))
            #expect(chunks.contains { $0.compressed } && chunks.contains { !$0.compressed })
            // Chunks of text shrink to a fraction; those where text and noise meet, less.
            #expect(chunks.filter(\.compressed).allSatisfy { $0.blob.size < $0.size } && chunks.contains { $0.blob.size < $0.size / 4 })
            #expect(chunks.filter { !$0.compressed }.allSatisfy { $0.blob.hash == $0.sha256 })
            var read: [UInt8] = []
            #expect(try dump.read(from: store, interruption: nil) { read += $0 } == UInt64(content.count))
            #expect(read == content)
            try dump.materialize(at: folder + "/copy", from: store, interruption: nil)
            #expect(try Data(contentsOf: URL(fileURLWithPath: folder + "/copy")) == Data(content))
        }
    }

    @Test func theNextDumpStoresOnlyTheChunksThatChanged() throws {
        try withStore { store, folder in
            var content = compressible(20 << 20)
            try Data(content).write(to: URL(fileURLWithPath: folder + "/first"))
            let first = try DumpChunkWriter(store: store).store(file: folder + "/first", known: [:])
            guard case let .chunks(_, _, firstChunks) = first else { Issue.record("not chunked"); return }
            let stored = try store.storedHashes(unusedSince: .distantFuture).count
            // A row changed in the middle: the same length, other bytes.
            content.replaceSubrange((10 << 20)..<((10 << 20) + 64), with: Array(repeating: UInt8(ascii: "x"), count: 64))
            try Data(content).write(to: URL(fileURLWithPath: folder + "/second"))
            let known = Dictionary(firstChunks.map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
            let second = try DumpChunkWriter(store: store).store(file: folder + "/second", known: known)
            guard case let .chunks(_, _, secondChunks) = second else { Issue.record("not chunked"); return }
            let new = secondChunks.filter { known[$0.sha256] == nil }
            #expect(new.count == 1, "\(new.count) of \(secondChunks.count) chunks new")
            #expect(try store.storedHashes(unusedSince: .distantFuture).count == stored + new.count)
            var read: [UInt8] = []
            try second.read(from: store, interruption: nil) { read += $0 }
            #expect(read == content)
        }
    }

    @Test func aDamagedChunkIsNamedByItsPlaceAndBlob() throws {
        try withStore { store, folder in
            try Data(compressible(8 << 20)).write(to: URL(fileURLWithPath: folder + "/dump"))
            let dump = try DumpChunkWriter(store: store).store(file: folder + "/dump", known: [:])
            guard case let .chunks(_, _, chunks) = dump, chunks.count >= 3 else { Issue.record("too few chunks"); return }
            let path = store.path(for: chunks[1].blob.hash)
            chmod(path, 0o600)
            var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            bytes[bytes.count / 2] ^= 0x20
            try bytes.write(to: URL(fileURLWithPath: path))
            do {
                try dump.read(from: store, interruption: nil) { _ in }
                Issue.record("a damaged chunk was read")
            } catch let error as DumpReadError {
                #expect(error.index == 2 && error.count == chunks.count && error.chunk == chunks[1])
                #expect(error.description.hasPrefix("chunk 2 of \(chunks.count) of the database dump: blob \(chunks[1].blob.hash) is corrupt"))
            }
            #expect(throws: (any Error).self) { try dump.materialize(at: folder + "/copy", from: store, interruption: nil) }
            #expect(!FileManager.default.fileExists(atPath: folder + "/copy"))
        }
    }
}
