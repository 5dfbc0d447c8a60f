import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// A dump written into a pipe gets the data offsets pg_dump writes when it
/// can seek: byte for byte, but for the creation time in its header.
@Suite struct DumpOffsetsTests {
    @Test func aPipedDumpGetsTheOffsetsPgDumpWritesIntoAFile() async throws {
        let database = try await TestPostgres.createDatabase("offsets")
        defer { TestPostgres.dropDatabase(database) }
        for statement in [
            "CREATE TABLE a (id int PRIMARY KEY, v text)",
            "INSERT INTO a SELECT i, md5(i::text) FROM generate_series(1, 5000) i",
            "CREATE SCHEMA s",
            "CREATE TABLE s.b (id int, w text)",
            "INSERT INTO s.b SELECT i, repeat('x', i % 300) FROM generate_series(1, 3000) i",
            "CREATE TABLE empty (id int)",
            "SELECT lo_from_bytea(0, convert_to(repeat('large object ', 1000), 'UTF8'))",
        ] { _ = try await TestPostgres.query(database, statement) }
        let scratch = try ScratchDirectory("offsets")
        defer { scratch.remove() }
        let (piped, seekable) = (scratch.path + "/piped.backup", scratch.path + "/file.backup")
        let url = TestPostgres.connectionString(database)
        let dumped = try await runCommand("/bin/sh", ["-c", """
            pg_dump --format=custom --compress=0 --dbname='\(url)' | cat > '\(piped)' &&
            pg_dump --format=custom --compress=0 --dbname='\(url)' --file='\(seekable)'
            """])
        #expect(dumped.status == 0, "\(dumped.standardError)")

        #expect(try DumpOffsets.fill(piped) >= 3)
        #expect(try DumpOffsets.fill(seekable) == 0)
        let (filled, expected) = (Array(try Data(contentsOf: URL(fileURLWithPath: piped))),
                                  Array(try Data(contentsOf: URL(fileURLWithPath: seekable))))
        // The header's creation time (seven 5-byte integers after the 16 bytes before them) may differ.
        #expect(filled.count == expected.count)
        #expect(filled.prefix(16) == expected.prefix(16))
        #expect(filled.dropFirst(51) == expected.dropFirst(51))
        let restored = try await TestPostgres.createDatabase("offsets_restored")
        defer { TestPostgres.dropDatabase(restored) }
        let restore = try await runCommand("/bin/sh", ["-c",
            "pg_restore --jobs=2 --exit-on-error --dbname='\(TestPostgres.connectionString(restored))' '\(piped)'"])
        #expect(restore.status == 0, "\(restore.standardError)")
        #expect(try TestPostgres.tableFingerprints(restored) == TestPostgres.tableFingerprints(database))
    }

    /// Helper findings: every data block was remembered (25 million empty ones took backupd to 1.7 GB), the last
    /// copy of a duplicated block won where pg_restore reads the first, and 2-byte offsets wrapped onto planted
    /// blocks. Only the entries' own first blocks count now, and only 8-byte offsets are filled.
    @Test func onlyEachEntrysFirstBlockIsTakenAndOnlyEightByteOffsetsAreFilled() async throws {
        let database = try await TestPostgres.createDatabase("offsets")
        defer { TestPostgres.dropDatabase(database) }
        _ = try await TestPostgres.query(database, "CREATE TABLE a (id int)")
        _ = try await TestPostgres.query(database, "INSERT INTO a SELECT generate_series(1, 10)")
        let scratch = try ScratchDirectory("offsets")
        defer { scratch.remove() }
        let piped = scratch.path + "/piped.backup"
        #expect(try await runCommand("/bin/sh", ["-c", "pg_dump --format=custom --compress=0 --dbname='\(TestPostgres.connectionString(database))' | cat > '\(piped)'"]).status == 0)
        let original = Array(try Data(contentsOf: URL(fileURLWithPath: piped)))
        // A second block for every id after the dump, and blocks of ids no entry has: neither is taken.
        let listing = try await runCommand("/usr/bin/pg_restore", ["--list", piped]).standardOutput
        let dataID = try #require(listing.split(separator: "\n").first { $0.contains("TABLE DATA") }.flatMap { Int($0.prefix { $0 != ";" }) })
        func block(_ id: Int) -> [UInt8] { [1, 0] + withUnsafeBytes(of: Int32(id).littleEndian, Array.init) + [0, 0, 0, 0, 0] }
        try Data(original + block(dataID) + (90_000..<90_100).flatMap(block)).write(to: URL(fileURLWithPath: piped))
        #expect(try DumpOffsets.fill(piped) == 1)
        let restored = try await TestPostgres.createDatabase("offsets_restored")
        defer { TestPostgres.dropDatabase(restored) }
        let restore = try await runCommand("/usr/bin/pg_restore", ["--jobs=2", "--exit-on-error", "--dbname=\(TestPostgres.connectionString(restored))", piped])
        #expect(restore.status == 0, "\(restore.standardError)")
        await #expect(try TestPostgres.query(restored, "SELECT count(*) AS n FROM a")[0].int64("n") == 10)

        // The same dump saying its offsets are 2 bytes long is left as it is.
        var short = original
        short[9] = 2
        try Data(short).write(to: URL(fileURLWithPath: piped))
        #expect(try DumpOffsets.fill(piped) == 0)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: piped))) == short)

        // A cancelled restore stops the reading.
        let stopped = Interruption()
        stopped.set()
        #expect(throws: BlobStoreError.self) { try DumpOffsets.fill(piped, interruption: stopped) }
    }

    @Test func whatIsNotACustomFormatDumpIsLeftAsItIs() throws {
        let scratch = try ScratchDirectory("offsets")
        defer { scratch.remove() }
        let path = scratch.path + "/not-a-dump"
        let content = Array("PGDMP but not really a dump at all".utf8) + Secure.randomBytes(4096)
        try Data(content).write(to: URL(fileURLWithPath: path))
        #expect(try DumpOffsets.fill(path) == 0)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == content)

        // An uploaded dump is anyone's bytes: 8-byte integers at -2^63, and a string of 2^40 bytes, are refused, not trusted.
        let header = Array("PGDMP".utf8) + [1, 14, 0, 8, 8, 1]
        for crafted in [header + [1, 0, 0, 0, 0, 0, 0, 0, 0x80],
                        header + [0] + [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 0, count: 7 * 9) + [0, 0, 0, 0, 0, 0, 1, 0, 0]] {
            try Data(crafted).write(to: URL(fileURLWithPath: path))
            #expect(try DumpOffsets.fill(path) == 0)
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: path))) == crafted)
        }
    }
}
