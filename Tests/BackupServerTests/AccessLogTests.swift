import BackupCatalog
import BackupClient
import BackupRules
import BackupStorage
@testable import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Logging
import Synchronization
import Testing

/// The access log (issue 22): one line per RPC call and per HTTP request,
/// found by the request id the client was told.
@Suite struct AccessLogTests {
    static let caller = Caller(tokenID: "0b7c", tokenName: "nightly-ci", namespace: "acme", role: .operator)

    /// A dispatcher whose one method is authorized in namespace acme, logging into `log`.
    private func dispatcher(_ log: CapturedLog) -> RPCDispatcher {
        var router = RPCRouter(requestTimeout: .seconds(30))
        router.unary(Backups.getBackup) { request, context in
            try context.authorize(.viewer, in: "acme")
            return .with { $0.id = request.id; $0.comment = String(repeating: "x", count: 1000) }
        }
        return RPCDispatcher(router: router, logger: log.logger()) { secret in secret == "good" ? Self.caller : nil }
    }

    private func call(_ dispatcher: RPCDispatcher, method: String = Backups.getBackup.name, token: String?,
                      origin: CallOrigin = CallOrigin(peer: "192.0.2.7")) async -> CallStatus {
        let (requests, continuation) = CallRequests.makeStream()
        let request = GetBackupRequest.with { $0.id = "b1" }.serializedBytes()
        continuation.yield(request, charge: request.count + 9)
        continuation.finish()
        var start = CallStart()
        start.method = method
        if let token { start.metadata = [MetadataEntry("authorization", "Bearer \(token)")] }
        return await dispatcher.handle(start, requests: requests, cancelled: AsyncStream<String>.makeStream().stream, origin: origin) { _ in }
    }

    @Test func everyCallIsOneLineNamingItsRequestCallerNamespaceStatusAndBytes() async throws {
        let log = CapturedLog()
        let dispatcher = dispatcher(log)
        let status = await call(dispatcher, token: "good", origin: CallOrigin(peer: "192.0.2.7", clientIdentity: "CN=backupctl"))
        #expect(status.code == .ok && status.requestID.count == 16 && status.requestID.allSatisfy(\.isHexDigit))
        let line = try #require(log.all.only { $0.metadata["request_id"] == status.requestID })
        #expect(line.level == .info && line.message == "rpc call")
        #expect(line.metadata["peer"] == "192.0.2.7" && line.metadata["client"] == "CN=backupctl")
        #expect(line.metadata["method"] == Backups.getBackup.name && line.metadata["status"] == "OK")
        #expect(line.metadata["token_id"] == "0b7c" && line.metadata["token_name"] == "nightly-ci" && line.metadata["namespace"] == "acme")
        let request = GetBackupRequest.with { $0.id = "b1" }.serializedBytes()
        #expect(line.metadata["bytes_in"] == "\(request.count + 9)")
        #expect(Int(line.metadata["bytes_out"] ?? "") ?? 0 > 1000)
        #expect(Double(line.metadata["duration_ms"] ?? "") != nil)
        #expect(!line.metadata.values.contains { $0.contains("good") }, "the token was logged")

        // A refused call is logged too, with no caller and no namespace; each call gets an id of its own.
        let refused = await call(dispatcher, token: "forged-secret")
        #expect(refused.code == .unauthenticated && refused.requestID != status.requestID)
        let refusal = try #require(log.all.only { $0.metadata["request_id"] == refused.requestID })
        #expect(refusal.metadata["status"] == "UNAUTHENTICATED" && refusal.metadata["token_id"] == nil && refusal.metadata["namespace"] == nil)
        #expect(!refusal.metadata.values.contains { $0.contains("forged-secret") })

        // What a client chose stays one line, cut to 200 characters.
        let hostile = await call(dispatcher, method: "backup.v1.Backups/Get\nfake line \u{1b}[31m" + String(repeating: "m", count: 500), token: "good")
        let odd = try #require(log.all.only { $0.metadata["request_id"] == hostile.requestID })
        let method = try #require(odd.metadata["method"])
        #expect(!method.contains("\n") && !method.contains("\u{1b}") && method.count == 201 && method.hasPrefix("backup.v1.Backups/Get?fake"))
        #expect(log.all.count == 3)
    }

    /// A download fetched with its signed URL is one line naming the
    /// download, its namespace, the status and the bytes sent, with the path
    /// but never the signature; a forged link's line names no namespace.
    /// The answer's `X-Request-Id` finds the line. A client's certificate
    /// under mutual TLS names the caller of an RPC call.
    @Test func aDownloadIsOneLineWithoutItsSignatureFoundByItsRequestID() async throws {
        let log = CapturedLog()
        try await withTestApp { app in
            try await withInProcessServer(live: true, clientCA: "\(projectRoot)/certs/dev/ca.crt", log: log) { server in
                /// A client presenting the development client certificate: the listener asks every connection for one.
                func withCertifiedClient<T: Sendable>(token: String, _ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
                    var settings = try server.settings(token: token)
                    settings.clientCertificate = ("\(projectRoot)/certs/dev/client.crt", "\(projectRoot)/certs/dev/client.key")
                    return try await BackupClient.withConnection(settings, body)
                }
                try await withCertifiedClient(token: server.platformToken) { client in
                    _ = try await client.unary(Backups.registerEnvironment, .with {
                        $0.namespace = "acme"; $0.name = "shop-production"; $0.app = "shop"
                        $0.databaseURL = app.connectionString; $0.fileStorePath = app.fileStore
                    })
                }
                let (download, backupJob) = try await withCertifiedClient(token: server.adminToken) { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    #expect(try await waitForJob(created.job.id, on: client).status == .finished)
                    return (try await readyDownload(client, created.backup), created.job.id)
                }
                let created = try #require(log.all.first { $0.metadata["method"] == Backups.createBackup.name })
                #expect(created.metadata["client"] == "CN=backupctl" && created.metadata["peer"] == "127.0.0.1"
                        && created.metadata["token_name"] == "test-admin" && created.metadata["namespace"] == "acme")
                // The lines of the jobs a call queued carry its request id: the backup's, and the archive's of RequestDownload.
                let backupLines = log.all.filter { $0.metadata["job"] == backupJob }
                #expect(backupLines.count >= 2 && backupLines.allSatisfy { $0.metadata["request_id"] == created.metadata["request_id"] })
                let requested = try #require(log.all.first { $0.metadata["method"] == Backups.requestDownload.name })
                let archiveLines = log.all.filter { $0.metadata["kind"] == "archive" && $0.metadata["job"] != nil }
                #expect(!archiveLines.isEmpty && archiveLines.allSatisfy { $0.metadata["request_id"] == requested.metadata["request_id"] })

                let scratch = try ScratchDirectory("access-log")
                defer { scratch.remove() }
                // curl presents the client certificate too.
                let identity = ["--cert", "\(projectRoot)/certs/dev/client.crt", "--key", "\(projectRoot)/certs/dev/client.key"]
                let fetched = try await curl(identity + ["-o", scratch.path + "/archive", "-D", scratch.path + "/head", download.url])
                #expect(fetched.status == 0, "\(fetched.standardError)")
                let requestID = try #require(responseHead(try String(contentsOfFile: scratch.path + "/head", encoding: .utf8)).headers["x-request-id"])
                // The line is written once the answer is in the socket: curl may have it first.
                try await eventually(within: .seconds(10)) { log.all.contains { $0.metadata["request_id"] == requestID } }
                let line = try #require(log.all.only { $0.metadata["request_id"] == requestID })
                #expect(line.message == "http request" && line.metadata["status"] == "200" && line.metadata["http_method"] == "GET")
                #expect(line.metadata["bytes_out"] == "\(download.sizeBytes)" && line.metadata["download"] == download.id
                        && line.metadata["namespace"] == "acme" && line.metadata["peer"] == "127.0.0.1")
                #expect(line.metadata["path"] == "/v1/downloads/\(download.id)/\(download.filename)")

                let forged = download.url.replacingOccurrences(of: "sig=", with: "sig=AAAA")
                _ = try await curl(identity + ["-o", "/dev/null", "-D", scratch.path + "/forged", forged])
                let forgedID = try #require(responseHead(try String(contentsOfFile: scratch.path + "/forged", encoding: .utf8)).headers["x-request-id"])
                try await eventually(within: .seconds(10)) { log.all.contains { $0.metadata["request_id"] == forgedID } }
                let refused = try #require(log.all.only { $0.metadata["request_id"] == forgedID })
                #expect(refused.metadata["status"] == "403" && refused.metadata["namespace"] == nil && refused.metadata["bytes_out"] != "0")
                #expect(!log.all.contains { $0.metadata.values.contains { $0.contains("sig=") } }, "a signature was logged")

                // Each fetch of the real link is activity of its environment, by whoever asked for the link; the forged
                // link's is not, and the activity says nothing of it.
                let ranged = try await curl(identity + ["-r", "0-99", "-o", scratch.path + "/part", download.url])
                #expect(ranged.status == 0, "\(ranged.standardError)")
                func fetches() async throws -> [Activity] {
                    try await withCertifiedClient(token: server.adminToken) { client in
                        try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.environment = "shop-production" }).activity
                    }.filter { $0.action == "download" && $0.detail.hasPrefix("fetch of") }
                }
                try await eventually(within: .seconds(10)) { try await fetches().count == 2 }
                let recorded = try await fetches()
                #expect(recorded.allSatisfy { $0.outcome == "FETCHED" && $0.actor == "test-admin" && $0.backupID == download.backupID })
                #expect(recorded[1].detail == "fetch of download \(download.id) from 127.0.0.1: GET the whole archive, HTTP 200, "
                        + "\(download.sizeBytes) bytes sent (request \(requestID))")
                #expect(recorded[0].detail.hasPrefix("fetch of download \(download.id) from 127.0.0.1: GET bytes=0-99, HTTP 206, 100 bytes sent"))

                // A link this server signed, tried after it expired: refused, and recorded, being authentic.
                let path = "/v1/downloads/\(download.id)/\(download.filename)"
                let expiredQuery = try URLSigningKeys(parsing: testDownloadKeys).signedQuery(path: path, expires: Int64(Date().timeIntervalSince1970) - 60)
                let origin = String(download.url.prefix { $0 != "?" }.dropLast(path.count))
                let expired = try await curl(identity + ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "\(origin)\(path)?\(expiredQuery)"])
                #expect(expired.standardOutput == "403", "\(expired.standardOutput) \(expired.standardError)")
                try await eventually(within: .seconds(10)) { try await fetches().count == 3 }
                let refusedFetch = try await fetches()[0]
                #expect(refusedFetch.outcome == "REFUSED" && refusedFetch.actor == "test-admin" && refusedFetch.detail.contains("HTTP 403"),
                        "\(refusedFetch)")
                // Helper finding: once every link had expired, the sweep removed the archive and its downloads, and a
                // link tried later was in the access log only. The download is remembered: still recorded.
                try await TestPostgres.query(server.catalogDatabase, "UPDATE downloads SET expires_at = now() - interval '1 minute'")
                _ = try await server.catalog.expireArchives(lost: [])
                #expect(try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM downloads")[0].int64("n") == 0)
                _ = try await curl(identity + ["-sS", "-o", "/dev/null", "\(origin)\(path)?\(expiredQuery)"])
                try await eventually(within: .seconds(10)) { try await fetches().count == 4 }
                let later = try await fetches()[0]
                #expect(later.outcome == "REFUSED" && later.actor == "test-admin" && later.backupID == download.backupID, "\(later)")

                // A link's holder cannot grow the catalog a fetch at a time: past the hour's allowance the access log alone has them.
                let fetch = DownloadFetch(downloadID: download.id, peer: "192.0.2.9", requestID: "0", method: "HEAD", range: "", status: 200, bytesSent: 0)
                for _ in 0..<3 { try await server.catalog.recordDownloadFetch(fetch, perHour: 5) }
                #expect(try await fetches().count == 5)
            }
        }
    }

    @Test func jsonLinesAreOneObjectEachWithEveryField() throws {
        let written = CapturedLines()
        var handler = JSONLogHandler(label: "backupd") { written.add($0) }
        handler.metadata = ["process": "a"]
        var logger = Logger(label: "backupd") { _ in handler }
        logger.logLevel = .info
        logger.info("rpc call", metadata: ["request_id": "00ff", "method": "say \"hi\"\n\u{1}", "message": "a field named message"])
        logger.debug("not written")
        let lines = written.all
        #expect(lines.count == 1 && lines[0].hasSuffix("}\n") && lines[0].filter { $0 == "\n" }.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: String])
        #expect(object["message"] == "rpc call" && object["level"] == "info" && object["label"] == "backupd")
        #expect(object["request_id"] == "00ff" && object["method"] == "say \"hi\"\n\u{1}" && object["process"] == "a")
        #expect(object["_message"] == "a field named message")
        #expect(object["time"].map { ISO8601DateFormatter.withFractionalSeconds.date(from: $0) != nil } == true)
    }
}

/// Lines a JSON handler wrote.
private final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    func add(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

extension ISO8601DateFormatter {
    fileprivate static var withFractionalSeconds: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}

extension Array {
    /// The one element that matches, or nil when none or several do.
    fileprivate func only(where matches: (Element) -> Bool) -> Element? {
        let found = filter(matches)
        return found.count == 1 ? found[0] : nil
    }
}
