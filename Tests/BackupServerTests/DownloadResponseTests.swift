@testable import BackupServer
import Foundation
import Testing

/// What a download answers to GET/HEAD with its Range and If-Range headers,
/// as a table: the header values and the status and bytes they lead to.
@Suite struct DownloadResponseTests {
    static let file = DownloadResponse.File(
        name: "files_and_database-0d3e301f-202611251200.tar.gz", size: 1000,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", modified: 1_764_072_000)
    static let etag = "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\""

    @Test(arguments: [
        // No range, or one the RFC lets a server ignore: the whole file.
        (nil, nil, DownloadResponse.Body.whole),
        ("bytes=0-499, 500-999", nil, .whole),
        ("items=0-1", nil, .whole),
        ("bytes=5", nil, .whole),
        ("bytes=9-3", nil, .whole),
        ("bytes=-", nil, .whole),
        ("bytes=a-9", nil, .whole),
        ("bytes=0-99999999999999999999", nil, .whole),
        // One range: that part, clamped to the file.
        ("bytes=0-499", nil, .part(first: 0, last: 499)),
        ("bytes=500-", nil, .part(first: 500, last: 999)),
        ("bytes=990-2000", nil, .part(first: 990, last: 999)),
        ("bytes=-100", nil, .part(first: 900, last: 999)),
        ("bytes=-5000", nil, .part(first: 0, last: 999)),
        (" bytes=999-999 ", nil, .part(first: 999, last: 999)),
        // Past the end: 416.
        ("bytes=1000-", nil, .unsatisfiable),
        ("bytes=1000-1200", nil, .unsatisfiable),
        ("bytes=-0", nil, .unsatisfiable),
        // If-Range: the range only while the file is the one the client has part of.
        ("bytes=500-", etag, .part(first: 500, last: 999)),
        ("bytes=500-", "Tue, 25 Nov 2025 12:00:00 GMT", .part(first: 500, last: 999)),
        ("bytes=500-", "\"another\"", .whole),
        ("bytes=500-", "W/" + etag, .whole),
        ("bytes=500-", "Tue, 25 Nov 2025 12:00:01 GMT", .whole),
    ] as [(String?, String?, DownloadResponse.Body)])
    func rangesAnswer(range: String?, ifRange: String?, body: DownloadResponse.Body) {
        #expect(DownloadResponse(for: Self.file, range: range, ifRange: ifRange).body == body)
    }

    @Test func headersNameTheFileAndItsPartAndKeepCachesAndSniffersOut() {
        func headers(_ range: String?) -> [String: String] {
            Dictionary(uniqueKeysWithValues: DownloadResponse(for: Self.file, range: range, ifRange: nil).headers.map { ($0.name, $0.value) })
        }
        let whole = headers(nil)
        #expect(whole == [
            "Content-Type": "application/gzip",
            "Content-Disposition": "attachment; filename=\"files_and_database-0d3e301f-202611251200.tar.gz\"",
            "ETag": Self.etag,
            "Last-Modified": "Tue, 25 Nov 2025 12:00:00 GMT",
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Length": "1000",
        ])
        #expect(headers("bytes=100-199")["Content-Range"] == "bytes 100-199/1000")
        #expect(headers("bytes=100-199")["Content-Length"] == "100")
        #expect(headers("bytes=5000-")["Content-Range"] == "bytes */1000")
        #expect(DownloadResponse(for: Self.file, range: "bytes=5000-", ifRange: nil).status == 416)
        let dump = DownloadResponse.File(name: "database-0d3e301f-202611251200.backup", size: 0, sha256: "00", modified: 0)
        #expect(DownloadResponse(for: dump, range: nil, ifRange: nil).headers.first { $0.name == "Content-Type" }?.value
            == "application/octet-stream")
        // An empty file has no byte to give.
        #expect(DownloadResponse(for: dump, range: "bytes=0-", ifRange: nil).body == .unsatisfiable)
    }

    @Test func httpDatesAreIMFFixdate() {
        #expect(httpDate(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(httpDate(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(httpDate(951_782_400) == "Tue, 29 Feb 2000 00:00:00 GMT")
    }
}

/// What the archive cache's sweep keeps of a listing, given what the
/// catalog says is being prepared: ready archives are blobs of the store.
@Suite struct ArchiveCacheSweepTests {
    @Test func aPreparingArchiveKeepsItsPartialFileAndEverythingElseGoes() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cache-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let cache = try ArchiveCache(directory: folder, reservedDiskBytes: 0)
        // "ready" is a file an earlier version kept for a ready archive, which is now a blob of the store.
        let names = ["ready", "writing.partial", "ready.partial", "gone.partial"]
        for name in names { #expect(FileManager.default.createFile(atPath: "\(folder)/\(name)", contents: Data("x".utf8))) }
        let removed = cache.sweep(listing: names, preparing: ["writing"])
        #expect(removed == 3)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["writing.partial"])
    }
}
