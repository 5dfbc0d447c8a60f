import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// Archives compressed a block per gzip member on all cores: one stream that
/// gzip reads whole, text compressed, random bytes stored rather than deflated.
@Suite struct GzipMembersTests {
    @Test func membersFormOneGzipStreamWithTextCompressedAndRandomBytesStored() async throws {
        let scratch = try ScratchDirectory("gzip")
        defer { scratch.remove() }
        let random = Secure.randomBytes(3 << 20)
        let text = Array(String(repeating: "invoice 42 paid to customer 7 on page 3; ", count: 80_000).utf8)
        var output: [UInt8] = []
        let gzip = GzipMembers(level: 6) { output.append(contentsOf: $0) }
        // Written in uneven pieces, as libarchive hands them on.
        for piece in (random + text).chunks(ofCount: 10_240 - 7) { try piece.withUnsafeBytes { try gzip.write($0) } }
        try gzip.finish()
        let path = scratch.path + "/out.gz"
        try Data(output).write(to: URL(fileURLWithPath: path))

        let whole = try await runCommand("/bin/sh", ["-c", "gzip -dc '\(path)' | sha256sum"])
        #expect(whole.standardOutput.hasPrefix(ContentHash.of(random + text).hex), "\(whole.standardError)")
        // Each member's compressed and plain sizes, read with Python's zlib one member at a time.
        let members = try await runCommand("/usr/bin/python3", ["-c", """
            import sys, zlib
            data = open(sys.argv[1], 'rb').read()
            while data:
                d = zlib.decompressobj(31)
                plain = d.decompress(data)
                print(len(data) - len(d.unused_data), len(plain))
                data = d.unused_data
            """, path]).standardOutput.split(separator: "\n").map { $0.split(separator: " ").map { Int($0)! } }
        let blocks = (random.count + text.count + GzipMembers.blockSize - 1) / GzipMembers.blockSize
        #expect(members.count == blocks)
        #expect(members.map { $0[1] }.reduce(0, +) == random.count + text.count)
        // The three random blocks are stored (a few bytes over their size); the text blocks shrink tenfold and more.
        #expect(members.prefix(3).allSatisfy { $0[0] > $0[1] && $0[0] < $0[1] + 512 }, "\(members)")
        #expect(members.dropFirst(3).allSatisfy { $0[0] * 10 < $0[1] }, "\(members)")
    }
}

private extension Array {
    func chunks(ofCount count: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: self.count, by: count).map { self[$0..<Swift.min($0 + count, self.count)] }
    }
}
