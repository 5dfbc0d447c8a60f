import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// Runs curl against a test server (its CA trusted): `-sS` and `arguments`.
func curl(_ arguments: [String]) async throws -> CommandResult {
    try await runCommand("/usr/bin/curl", ["-sS", "--cacert", TestServer.caFile, "--max-time", "120"] + arguments)
}

/// The status code and headers curl saw (`-D -` output), names lowercased.
func responseHead(_ text: String) -> (status: Int, headers: [String: String]) {
    let lines = text.split(separator: "\r\n", omittingEmptySubsequences: true)
    let status = lines.first.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return (status, headers)
}

/// The status code of a GET (or `method`) of `url`, and the body.
func fetch(_ url: String, method: String = "GET", extra: [String] = []) async throws -> (status: Int, body: String) {
    let result = try await curl(["-X", method, "-w", "\n%{http_code}", url] + extra)
    let lines = result.standardOutput.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
}

/// Signed download URLs fetched over HTTPS from a real backupd by curl:
/// the restore-by-hand path, ranges and resumption, HEAD, and every way a
/// URL can be wrong.
@Suite(.serialized) struct DownloadURLTests {
    @Test func rangesResumptionAndHeadAnswerAsHTTPSays() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let scratch = try ScratchDirectory("ranges")
                defer { scratch.remove() }
                let whole = scratch.path + "/whole"
                #expect(try await curl(["-o", whole, download.url]).status == 0)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: whole))

                // HEAD: every header, no body.
                let head = try await curl(["-I", download.url])
                let (status, headers) = responseHead(head.standardOutput)
                #expect(status == 200)
                #expect(headers["content-length"] == String(bytes.count) && headers["accept-ranges"] == "bytes")
                #expect(headers["content-disposition"] == "attachment; filename=\"\(download.filename)\"")
                #expect(headers["etag"] == "\"\(download.sha256)\"" && headers["cache-control"] == "private, no-store")
                #expect(headers["x-content-type-options"] == "nosniff" && headers["content-type"] == "application/gzip")
                #expect(headers["last-modified"]?.hasSuffix(" GMT") == true)

                // One range: exactly those bytes, 206 with its Content-Range.
                let part = scratch.path + "/part"
                let ranged = try await curl(["-r", "100-1123", "-o", part, "-D", scratch.path + "/part.head", download.url])
                #expect(ranged.status == 0)
                #expect(try Data(contentsOf: URL(fileURLWithPath: part)) == bytes[100...1123])
                let partHead = responseHead(try String(contentsOfFile: scratch.path + "/part.head", encoding: .utf8))
                #expect(partHead.status == 206 && partHead.headers["content-range"] == "bytes 100-1123/\(bytes.count)")
                #expect(try await fetch(download.url, extra: ["-r", "\(bytes.count + 10)-"]).status == 416)

                // An interrupted download resumes where it stopped.
                let resumed = scratch.path + "/resumed"
                try bytes.prefix(bytes.count / 3).write(to: URL(fileURLWithPath: resumed))
                #expect(try await curl(["-C", "-", "-o", resumed, download.url]).status == 0)
                #expect(try Data(contentsOf: URL(fileURLWithPath: resumed)) == bytes)

                // Without ALPN the first bytes choose HTTP; keep-alive carries a second request.
                let twice = try await curl(["--no-alpn", "-o", scratch.path + "/a", download.url, "-o", scratch.path + "/b", download.url,
                                      "-w", "%{num_connects}\n"])
                #expect(twice.status == 0 && twice.standardOutput == "1\n0\n")
                #expect(try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/b")) == bytes)
                // And RPC still works without ALPN, on the same port.
                #expect(try await server.backupctl(["info"]).status == 0)
            }
        }
    }

    /// Helper finding: a ready archive replaced on the server by something
    /// that is not it (a folder) was answered 200 with its full length and no
    /// body. It is checked before any header goes out (the blob's size, on
    /// the local folder and on S3).
    @Test func aReadyArchiveThatIsNoLongerItsFileIsAnErrorNotAnEmptyOK() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup, databaseOnly: true) }
                #expect(try await storedArchives(server).map(\.hex) == [download.sha256])
                try await server.storage.replaceContent(of: try #require(ContentHash(hex: download.sha256)), with: Array("not the archive".utf8))
                let answer = try await fetch(download.url)
                #expect(answer.status == 500 && answer.body.contains("the archive cannot be read"), "\(answer)")
                #expect(!answer.body.contains(server.blobDirectory))
            }
        }
    }

    @Test func everyWrongURLIsRefusedWithItsReason() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let (full, databaseOnly) = try await server.withClient { client in
                    (try await readyDownload(client, backup), try await readyDownload(client, backup, databaseOnly: true))
                }
                let (origin, query) = (full.url.split(separator: "?")[0], String(full.url.split(separator: "?")[1]))
                let base = String(origin.prefix(while: { $0 != "/" }) + "//" + origin.dropFirst("https://".count).prefix(while: { $0 != "/" }))
                let path = String(origin.dropFirst(base.count))
                func with(_ field: String, _ value: String) -> String {
                    base + path + "?" + query.split(separator: "&").map { $0.hasPrefix(field + "=") ? "\(field)=\(value)" : String($0) }
                        .joined(separator: "&")
                }
                let fields = Dictionary(uniqueKeysWithValues: query.split(separator: "&").map {
                    (String($0.split(separator: "=")[0]), String($0.split(separator: "=")[1]))
                })
                let signature = fields["sig"]!
                let flipped = (signature.first == "A" ? "B" : "A") + signature.dropFirst()
                let keys = try URLSigningKeys(parsing: testDownloadKeys)
                let past = Int64(Date().timeIntervalSince1970) - 60
                let rotatedOut = try URLSigningKeys(parsing: "test-gone = \(base64URL(Array(repeating: 5, count: 32)))")

                let refusals: [(String, String, Int, String)] = [
                    ("changed signature", with("sig", flipped), 403, "signature does not match"),
                    ("changed expiry", with("expires", String(Int64(fields["expires"]!)! + 3600)), 403, "signature does not match"),
                    ("changed key id", with("kid", "test-old"), 403, "signature does not match"),
                    ("unknown key id", with("kid", "nobody"), 403, "no longer has"),
                    ("changed path", base + path.replacing(full.filename, with: "other.tar.gz") + "?" + query, 403, "signature does not match"),
                    ("expired", base + path + "?" + keys.signedQuery(path: path, expires: past), 403, "has expired"),
                    ("key rotated out", base + path + "?" + rotatedOut.signedQuery(path: path, expires: past + 3600), 403, "no longer has"),
                    ("another archive's signature", String(databaseOnly.url.split(separator: "?")[0]) + "?" + query, 403, "signature does not match"),
                    ("no signature", base + path, 403, "not a signed download link"),
                    ("not a download", base + "/v1/other", 404, "no such download"),
                ]
                for (what, url, status, reason) in refusals {
                    let answer = try await fetch(url)
                    #expect(answer.status == status, "\(what): \(answer.status)")
                    #expect(answer.body.contains(reason), "\(what): \(answer.body)")
                }
                let posted = try await fetch(full.url, method: "POST")
                #expect(posted.status == 405)
                let bigHeader = try await fetch(full.url, extra: ["-H", "X-Filler: " + String(repeating: "a", count: 20_000)])
                #expect(bigHeader.status == 431)
                let longLine = try await fetch(full.url + "&" + String(repeating: "b", count: 20_000))
                #expect([400, 431].contains(longLine.status))
                // The old key still verifies what it signed.
                let oldKeys = try URLSigningKeys(parsing: testDownloadKeys.components(separatedBy: "\n").filter { !$0.contains("test-new") }
                    .joined(separator: "\n"))
                let oldSigned = base + path + "?" + oldKeys.signedQuery(path: path, expires: Int64(fields["expires"]!)!)
                #expect(try await fetch(oldSigned, method: "HEAD", extra: ["-I"]).status == 200)

                // Deleting the backup: its URLs answer 404.
                _ = try await server.withClient { try await $0.unary(Backups.deleteBackup, .with { $0.id = backup.id }) }
                let deleted = try await fetch(full.url)
                #expect(deleted.status == 404 && deleted.body.contains("no such download"))
            }
        }
    }

    @Test func headlessChromiumSavesTheArchiveFromItsSignedURL() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let scratch = try ScratchDirectory("chromium")
                defer { scratch.remove() }
                let (profile, saved) = (scratch.path + "/profile", scratch.path + "/downloads")
                try FileManager.default.createDirectory(atPath: profile + "/Default", withIntermediateDirectories: true)
                try FileManager.default.createDirectory(atPath: saved, withIntermediateDirectories: true)
                try """
                    {"download": {"default_directory": "\(saved)", "prompt_for_download": false, "directory_upgrade": true}}
                    """.write(toFile: profile + "/Default/Preferences", atomically: true, encoding: .utf8)
                // The browser trusts the development server certificate by its public key, as a pinned self-run service would.
                let spki = try await runCommand("/bin/sh", ["-c", "openssl x509 -in \(projectRoot)/certs/dev/server.crt -pubkey -noout "
                    + "| openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64"])
                let browser = try BackgroundCommand("/usr/bin/chromium", [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(profile)",
                    "--ignore-certificate-errors-spki-list=\(spki.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines))",
                    download.url,
                ])
                defer { browser.stop() }
                let file = saved + "/" + download.filename
                try await eventually(within: .seconds(60)) {
                    (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64) == download.sizeBytes
                }
                let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
                #expect(ContentHash.of(bytes).hex == download.sha256)
            }
        }
    }

    @Test func backupctlDownloadsChecksAndResumes() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let scratch = try ScratchDirectory("backupctl-download")
                defer { scratch.remove() }
                let target = scratch.path + "/archive.tar.gz"
                let first = try await server.backupctl(["download", backup.id, "-o", target])
                #expect(first.status == 0, "\(first.standardError)")
                let bytes = try Data(contentsOf: URL(fileURLWithPath: target))
                let download = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id }) }
                #expect(ContentHash.of(bytes).hex == download.sha256 && first.standardOutput.contains("sha256 \(download.sha256)"))
                #expect(!FileManager.default.fileExists(atPath: target + ".partial"))

                // --url prints the signed URL, which plain curl fetches.
                let url = try await server.backupctl(["download", backup.id, "--url"]).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(url.contains("/v1/downloads/") && url.contains("&sig="))
                let viaCurl = try await curl(["-o", scratch.path + "/curl.tar.gz", url])
                let curled = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/curl.tar.gz"))
                #expect(viaCurl.status == 0 && curled == bytes)
                let json = try await server.backupctl(["download", backup.id, "--url", "--json"]).standardOutput
                #expect(json.contains("\"sha256\"") && json.contains(download.sha256))

                // A partial file from an interrupted run is resumed.
                let resumed = scratch.path + "/resumed.tar.gz"
                try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: resumed + ".partial"))
                #expect(try await server.backupctl(["download", backup.id, "-o", resumed]).status == 0)
                #expect(try Data(contentsOf: URL(fileURLWithPath: resumed)) == bytes)

                // A partial file that is not this archive's beginning fails the check, and is removed.
                var wrong = bytes.prefix(bytes.count / 2)
                wrong[wrong.startIndex + 10] ^= 0xff
                try wrong.write(to: URL(fileURLWithPath: resumed + ".partial"))
                try FileManager.default.removeItem(atPath: resumed)
                let refused = try await server.backupctl(["download", backup.id, "-o", resumed])
                #expect(refused.status != 0 && refused.standardError.contains("DATA_LOSS"))
                #expect(!FileManager.default.fileExists(atPath: resumed) && !FileManager.default.fileExists(atPath: resumed + ".partial"))

                // The dump alone restores with pg_restore.
                let dump = scratch.path + "/db.backup"
                #expect(try await server.backupctl(["download", backup.id, "--database-only", "-o", dump]).status == 0)
                #expect(ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: dump))).hex == backup.dumpSHA256)
            }
        }
    }

    @Test func silentAndHalfSentHTTPRequestsAreClosedAndDoNotHoldTheServer() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.authenticationTimeout = .seconds(1); $0.connections.partialFrameTimeout = .seconds(2) }) { server in
            /// Opens an HTTP connection (ALPN `http/1.1`, or none), sends `bytes`, and returns what came back before the server closed it.
            @Sendable func exchange(_ bytes: String, alpn: Bool = true) async throws -> String {
                let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await server.settings()
                    .connect(protocol: alpn ? "http/1.1" : nil) { _ in }
                return try await channel.executeThenClose { inbound, outbound in
                    if !bytes.isEmpty { try await outbound.write(ByteBuffer(string: bytes)) }
                    var answer = ""
                    for try await chunk in inbound { answer += String(buffer: chunk) }
                    return answer
                }
            }
            // Each ends because the server closes it (the guard only keeps a broken server from hanging the test).
            try await within(.seconds(30)) {
                try await withThrowingTaskGroup(of: String.self) { group in
                    group.addTask { try await exchange("") }                                        // silent
                    group.addTask { try await exchange("GET /v1/downloads/") }                      // half a request line
                    group.addTask { try await exchange("GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a") }     // headers never end
                    group.addTask { try await exchange("G", alpn: false) }                         // no ALPN, one letter
                    group.addTask {                                                                 // a body that never ends
                        try await exchange("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
                    }
                    for try await answer in group { #expect(answer.isEmpty, "\(answer)") }
                }
            }
            // Helper finding: requests that never name a ready download (404s every 300 ms) kept a connection open;
            // it must make a signed request for a ready download within the authentication timeout, as an RPC connection must.
            let unanswered = try await within(.seconds(30)) {
                let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await server.settings().connect(protocol: "http/1.1") { _ in }
                return try await channel.executeThenClose { inbound, outbound in
                    let asking = Task {
                        for _ in 0..<60 {
                            try await outbound.write(ByteBuffer(string: "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"))
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                    defer { asking.cancel() }
                    var answers = ""
                    for try await chunk in inbound { answers += String(buffer: chunk) }
                    return answers.components(separatedBy: "HTTP/1.1 404").count - 1
                }
            }
            #expect(unanswered < 20, "the connection stayed open through all \(unanswered) requests")
            // A kept-alive connection that asks nothing more is closed too, after its answer.
            let answered = try await within(.seconds(30)) { try await exchange("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n") }
            #expect(answered.hasPrefix("HTTP/1.1 404") && answered.contains("no such download"))
            // Helper finding: a malformed first request was answered 400 twice (once for what the decoder made of
            // the bytes after it); it is answered once, and the connection closed.
            for malformed in ["GET /v1/downloads/x HTTP/2.0\r\nHost: a\r\n\r\n", "GET /v1/downloads/x\r\n\r\n"] {
                let refused = try await within(.seconds(30)) { try await exchange(malformed) }
                #expect(refused.components(separatedBy: "400 Bad Request").count - 1 == 1, "\(refused)")
            }
            #expect(try await server.backupctl(["info"]).status == 0)
        }
    }

    @Test func downloadsHoldNoDescriptorsAreCappedPerNamespaceAndEndWithTheirDeletedArchive() async throws {
        try await withTestApp { app in
            // An archive larger than loopback's socket buffers (stored as it is), so that slow answers stay open.
            try addDocument(to: app, size: 64 << 20)
            try await withTestServer(arguments: ["--max-downloads-per-namespace", "2", "--archive-gzip-level", "0"]) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let archives = server.blobDirectory + "/archives"
                /// What the server's descriptors point at in the archive cache.
                func openArchives() -> [String] {
                    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.processIdentifier)/fd")) ?? []
                    return fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(server.processIdentifier)/fd/\($0)") }
                        .filter { $0.contains(archives) }
                }
                let slow = try SlowDownloads(2, bytesPerSecond: 1000, of: download.url)
                defer { slow.stop() }
                // Both take their turns before anything else asks (a probe racing them could take one's turn).
                try await eventually(within: .seconds(30)) { slow.allAnswered }
                #expect(slow.statuses == [200, 200])
                let stillSlow = slow.running
                #expect(stillSlow == 2, "a slow download ended: refused, or the archive fit in the sockets' buffers")
                try await eventually { try await fetch(download.url, extra: ["-r", "0-0"]).status == 503 }
                // Two of the namespace's downloads stream; a third waits its turn, a HEAD needs no turn.
                let refused = try await curl(["-D", "-", "-o", "/dev/null", download.url])
                #expect(responseHead(refused.standardOutput).status == 503 && responseHead(refused.standardOutput).headers["retry-after"] == "5")
                #expect(try await fetch(download.url, method: "HEAD", extra: ["-I"]).status == 200)
                // Helper finding: each download held its archive open, a descriptor beyond the connection's, and kept a
                // deleted backup's archive on disk while its client read slowly.
                #expect(openArchives().isEmpty)
                _ = try await server.withClient { try await $0.unary(Backups.deleteBackup, .with { $0.id = backup.id }) }
                try await eventually { try FileManager.default.contentsOfDirectory(atPath: archives).isEmpty }
                #expect(openArchives().isEmpty)
                // The streams end at their next chunk, and their turns come back (the URL now answers 404).
                try await eventually { try await fetch(download.url, extra: ["-r", "0-0"]).status == 404 }
            }
        }
    }

    /// Helper finding: one request for a ready download kept a connection
    /// "verified" for good, so one URL, even expired or deleted, could hold
    /// every connection slot with 404 pings.
    @Test func oneGoodRequestDoesNotKeepAConnectionForGood() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true, configure: { $0.connections.authenticationTimeout = .seconds(1) }) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let target = String(download.url.drop { $0 != "/" }.dropFirst(2).drop { $0 != "/" })
                let (good, pinged) = try await within(.seconds(30)) {
                    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await server.settings().connect(protocol: "http/1.1") { _ in }
                    return try await channel.executeThenClose { inbound, outbound in
                        let asking = Task {
                            try await outbound.write(ByteBuffer(string: "HEAD \(target) HTTP/1.1\r\nHost: x\r\n\r\n"))
                            for _ in 0..<60 {
                                try await Task.sleep(for: .milliseconds(100))
                                try await outbound.write(ByteBuffer(string: "HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"))
                            }
                        }
                        defer { asking.cancel() }
                        var answers = ""
                        for try await chunk in inbound { answers += String(buffer: chunk) }
                        return (answers.components(separatedBy: "HTTP/1.1 200").count - 1, answers.components(separatedBy: "HTTP/1.1 404").count - 1)
                    }
                }
                #expect(good == 1)
                #expect(pinged < 20, "404 pings kept the connection through all \(pinged)")
            }
        }
    }
}

/// What a test document holds.
enum DocumentContent {
    /// Zeros, sparse: it takes no disk.
    case zeros
    /// Random bytes no compression shrinks (an archive stores them as they are, fast).
    case incompressible
    /// Random letters of a 16-letter alphabet: gzip halves them, slowly at level 9.
    case text
}

/// Adds a document of `size` bytes to the app's database and store.
func addDocument(to app: TestApp, size: Int64, content: DocumentContent = .zeros) throws {
    let key = "ffffffff-0000-4000-8000-000000000001"
    try TestPostgres.query(app.database, """
        INSERT INTO "system$filedocument" (id, "__uuid__", name, size, changeddate) VALUES (100000, $1, 'big.bin', $2, now())
        """, key, String(size))
    try FileManager.default.createDirectory(atPath: app.fileStore + "/ff/ff", withIntermediateDirectories: true)
    let path = app.fileStore + "/ff/ff/" + key
    guard FileManager.default.createFile(atPath: path, contents: nil) else { throw TestSupportError("cannot make the document") }
    guard content != .zeros else {
        guard truncate(path, off_t(size)) == 0 else { throw TestSupportError("cannot make the document") }
        return
    }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    var left = size
    while left > 0 {
        let count = Int(min(left, 1 << 20))
        let bytes = Secure.randomBytes(count)
        try handle.write(contentsOf: content == .text ? bytes.map { 97 + $0 & 15 } : bytes)
        left -= Int64(count)
    }
}

/// How far a process's resident memory rose above where it was, at its
/// peak while `body` ran (sampled every 20 ms).
/// curl downloads of one URL at a capped rate, in the background, each
/// writing its response head to a file of its own: a test waits until each
/// was answered, rather than for a while.
final class SlowDownloads: Sendable {
    private let commands: [BackgroundCommand]
    private let heads: [String]

    init(_ count: Int, bytesPerSecond: Int, of url: String) throws {
        heads = (0..<count).map { _ in FileManager.default.temporaryDirectory.appendingPathComponent("head-\(UUID().uuidString)").path }
        commands = try heads.map { head in
            try BackgroundCommand("/usr/bin/curl", ["-sS", "--cacert", TestServer.caFile, "--limit-rate", "\(bytesPerSecond)",
                                                    "-D", head, "-o", "/dev/null", url])
        }
    }

    /// Each download's status, once its response head has come (nil until then).
    var statuses: [Int?] {
        heads.map { head in
            guard let text = try? String(contentsOfFile: head, encoding: .utf8), text.contains("\r\n\r\n") else { return nil }
            return responseHead(text).status
        }
    }
    var allAnswered: Bool { statuses.allSatisfy { $0 != nil } }
    var running: Int { commands.filter(\.isRunning).count }

    func stop() {
        commands.forEach { $0.stop() }
        heads.forEach { try? FileManager.default.removeItem(atPath: $0) }
    }
}

func residentGrowth(of pid: Int32, during body: () async throws -> Void) async throws -> Int {
    let baseline = residentBytes(pid)
    let sampling = Task {
        var peak = baseline
        while !Task.isCancelled {
            peak = max(peak, residentBytes(pid))
            try? await Task.sleep(for: .milliseconds(20))
        }
        return peak
    }
    defer { sampling.cancel() }
    try await body()
    sampling.cancel()
    return await sampling.value - baseline
}

/// The resident memory of a process, from /proc.
func residentBytes(_ pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else { return 0 }
    return kilobytes * 1024
}

/// Downloads restored by hand and read slowly at 2 GiB: long, so apart from
/// the other download URL tests.
@Suite(.serialized) struct LargeDownloadTests {
    @Test func aDownloadedArchiveRestoresByHandWithTarAndPgRestore() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                #expect(download.url.hasPrefix("https://127.0.0.1:\(server.address.split(separator: ":").last!)/v1/downloads/"))
                let scratch = try ScratchDirectory("by-hand")
                defer { scratch.remove() }
                let archive = scratch.path + "/" + download.filename
                let fetched = try await curl(["-o", archive, download.url])
                #expect(fetched.status == 0, "\(fetched.standardError)")
                let bytes = try Data(contentsOf: URL(fileURLWithPath: archive))
                #expect(ContentHash.of(bytes).hex == download.sha256 && UInt64(bytes.count) == download.sizeBytes)

                try FileManager.default.createDirectory(atPath: scratch.path + "/x", withIntermediateDirectories: false)
                #expect(try await runCommand("/bin/tar", ["xzf", archive, "-C", scratch.path + "/x"]).status == 0)
                let restored = try await TestPostgres.createDatabase("by_hand")
                defer { TestPostgres.dropDatabase(restored) }
                let pgRestore = try await runCommand("/usr/bin/pg_restore", ["--no-owner", "--no-privileges", "-h", "127.0.0.1",
                                                                        "-p", TestPostgres.port, "-U", "postgres", "-d", restored,
                                                                        scratch.path + "/x/db/db.backup"])
                #expect(pgRestore.status == 0, "\(pgRestore.standardError)")
                // The app's rows changed after the backup? Not here: it is stopped, so both are the snapshot.
                #expect(try TestPostgres.tableFingerprints(restored) == TestPostgres.tableFingerprints(app.database))
                // Every document of the backup, each as the app's store holds it (files no row refers to are not backed up).
                let tree = try folderFingerprint(scratch.path + "/x/tree")
                let store = try folderFingerprint(app.fileStore)
                #expect(tree.count == Int(backup.fileCount) && tree.count > 100)
                #expect(tree.allSatisfy { store[$0.key] == $0.value })
                let metadata = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: scratch.path + "/x/.metadata")))
                    as? [String: String]
                #expect(metadata?["snapshotId"] == backup.id && metadata?["modelVersion"] == "1.0.0")
                #expect(metadata?["sha256:db/db.backup"] == backup.dumpSHA256)
            }
        }
    }

    @Test func slowReadersHoldNoMemoryAndA2GiBDownloadGrowsTheServerByLessThan64MiB() async throws {
        try await withTestApp { app in
            // One 2 GiB document (sparse in the app's store), stored in the archive as it is (gzip level 0).
            let size: Int64 = 2 << 30
            try addDocument(to: app, size: size)
            try await withTestServer(arguments: ["--archive-gzip-level", "0"]) { server in
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                #expect(download.sizeBytes > UInt64(size))
                let growth = try await residentGrowth(of: server.processIdentifier) {
                    // Clients that take 100 bytes a second (a byte per 10 ms) while everything else goes on.
                    let slow = try SlowDownloads(4, bytesPerSecond: 100, of: download.url)
                    defer { slow.stop() }
                    try await eventually(within: .seconds(30)) { slow.allAnswered }
                    let whole = try await curl(["-o", "/dev/null", "-w", "%{size_download}", download.url])
                    #expect(whole.standardOutput == String(download.sizeBytes), "\(whole.standardError)")
                    let info = try await within(.seconds(10)) {
                        try await server.withClient { try await $0.unary(Backups.getDownload, .with { $0.id = download.id }) }
                    }
                    #expect(info.ready && info.sha256 == download.sha256)
                    #expect(slow.statuses == [200, 200, 200, 200])
                    #expect(slow.running == 4)
                }
                #expect(growth < 64 << 20, "the server grew by \(growth >> 20) MiB")
            }
        }
    }
}
