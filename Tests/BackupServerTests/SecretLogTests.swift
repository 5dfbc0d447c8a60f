import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// No secret leaves backupd as text: run at the most verbose log level with
/// every kind of secret configured, driven through every method, a download,
/// an upload, a failing job and a shutdown, neither its log, nor anything a
/// client was told, nor `--help` holds a secret in any of its usual spellings.
/// A process, because what is searched is what the process writes.
@Suite(.serialized) struct SecretLogTests {
    /// Spellings of a secret that a careless log line might use.
    private func spellings(_ bytes: [UInt8]) -> [String] {
        let data = Data(bytes)
        let standard = data.base64EncodedString()
        return [standard, standard.replacingOccurrences(of: "=", with: ""), base64URL(bytes), "\(bytes)",
                bytes.map { String(format: "%02x", $0) }.joined(), bytes.map { String(format: "%02X", $0) }.joined()]
    }

    private func spellings(_ text: String) -> [String] { [text] + spellings(Array(text.utf8)) }

    private func randomText(_ prefix: String) -> String { "\(prefix)-\(UUID().uuidString)-\(UUID().uuidString)" }

    @Test func noSecretReachesTheLogAClientOrHelp() async throws {
        let signingKey = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let catalogPassword = randomText("catalog-pw")
        let appPassword = randomText("app-pw")
        let wrongPassword = randomText("wrong-pw")
        let tlsKey = try String(contentsOfFile: "\(projectRoot)/certs/dev/server.key", encoding: .utf8)
            .split(separator: "\n").filter { !$0.hasPrefix("-----") }.map(String.init)

        let catalog = try await TestPostgres.createDatabase("catalog")
        let catalogURL = TestPostgres.connectionString(catalog) + " password=\(catalogPassword)"
        let keys = "signing = \(Data(signingKey).base64EncodedString())\n"
        var told: [String] = []  // everything a client was shown
        // Its blobs in an S3 bucket, the store's secret in its environment; later a second process with a wrong one.
        let blobs = try ScratchDirectory("secret-blobs")
        defer { blobs.remove() }
        let storage = try await TestStorage.make(.objectStore, directory: blobs.path)
        let storeSecret = try await MotoServer.shared.credentials.secretAccessKey.revealed, wrongStoreSecret = randomText("wrong-s3")
        // Its settings from a configuration file, as in production: the most verbose log, as JSON.
        let configuration = blobs.path + "/backupd.yaml"
        try "log-level: trace\nlog-format: json\n".write(toFile: configuration, atomically: true, encoding: .utf8)
        let server = try await TestServer.start(
            arguments: ["--config", configuration], catalogDatabase: catalog, storage: storage,
            environment: ["BACKUPD_CATALOG": catalogURL], downloadKeys: keys)
        var secrets = spellings(signingKey) + spellings(catalogPassword) + spellings(appPassword) + spellings(wrongPassword)
            + spellings(server.adminToken) + spellings(server.platformToken) + tlsKey + spellings(storeSecret) + spellings(wrongStoreSecret)
            // What an S3 request carries that is as good as a secret for a while: its signature.
            + ["Signature=", "X-Amz-Signature", "AWS4-HMAC-SHA256"]
        var wrongSecretLog = ""
        try await withTestApp { app in
            func cli(_ arguments: [String], token: String? = nil) async throws -> CommandResult {
                let result = try await server.backupctl(arguments, token: token)
                told += [result.standardOutput, result.standardError]
                return result
            }
            let ns = TestServer.namespace
            #expect(try await cli(["env", "register", "\(ns)/shop-production", "--app", "shop", "--file-store", app.fileStore,
                             "--database-url", app.connectionString + " password=\(appPassword)", "--package-version", "1.0.0"],
                            token: server.platformToken).status == 0)
            // A second environment whose database is dropped once registered: its backup fails.
            let scratch = try ScratchDirectory("secret-files")
            let doomed = try await TestPostgres.createDatabase("doomed")
            defer { scratch.remove(); TestPostgres.dropDatabase(doomed) }
            try FileManager.default.createDirectory(atPath: scratch.path + "/files", withIntermediateDirectories: true)
            #expect(try await cli(["env", "register", "\(ns)/broken", "--app", "shop", "--file-store", scratch.path + "/files",
                             "--database-url", TestPostgres.connectionString(doomed) + " password=\(wrongPassword)"],
                            token: server.platformToken).status == 0)
            #expect(try await cli(["env", "update", "\(ns)/broken", "--database-url",
                             "postgresql://postgres:\(wrongPassword)@127.0.0.1:\(TestPostgres.port)/\(doomed)"],
                            token: server.platformToken).status == 0)
            await TestPostgres.dropDatabase(doomed)
            for arguments in [["info"], ["env", "list"], ["env", "show", "\(ns)/shop-production"], ["env", "show", "\(ns)/broken"],
                              ["env", "show", "\(ns)/broken", "--json"]] {
                #expect(try await cli(arguments).status == 0, "\(arguments)")
                #expect(try await cli(arguments, token: server.platformToken).status >= 0)
            }
            let failed = try await cli(["create", "--env", "\(ns)/broken", "--wait"])
            #expect(failed.status != 0, "a backup with a wrong password must fail: \(failed.standardOutput)")

            let created = try await cli(["create", "--env", "\(ns)/shop-production", "--comment", "secrets", "--wait", "--json"])
            #expect(created.status == 0, "\(created.standardError)")
            let backup = try #require(try JSONSerialization.jsonObject(with: Data(created.standardOutput.utf8)) as? [String: Any])
            let id = try #require(backup["id"] as? String)
            for arguments in [["list", "--env", "\(ns)/shop-production"], ["show", id], ["comment", id, "kept"],
                              ["job", try #require(backup["job_id"] as? String)], ["verify", id, "--wait"],
                              ["schedule", "show", "--env", "\(ns)/shop-production"],
                              ["schedule", "set", "--env", "\(ns)/shop-production", "--time", "03:00"],
                              ["activity", "--env", "\(ns)/shop-production"], ["activity", "--env", "\(ns)/broken"],
                              ["token", "list"]] {
                #expect(try await cli(arguments).status == 0, "\(arguments)")
            }
            // A new token's secret is shown once to whoever made it; it must go nowhere else.
            let madeToken = try await cli(["token", "create", "--namespace", ns, "--role", "viewer", "--name", "dashboard", "--json"])
            let made = try #require(try JSONSerialization.jsonObject(with: Data(madeToken.standardOutput.utf8)) as? [String: Any])
            let viewerToken = try #require(made["secret"] as? String)
            told.removeLast(2)
            secrets += spellings(viewerToken)
            #expect(try await cli(["list", "--env", "\(ns)/shop-production"], token: viewerToken).status == 0)
            #expect(try await cli(["create", "--env", "\(ns)/shop-production"], token: viewerToken).status != 0)
            #expect(try await cli(["token", "revoke", try #require((made["token"] as? [String: Any])?["id"] as? String)]).status == 0)
            #expect(try await cli(["info"], token: viewerToken).status != 0)

            // A download through its signed URL, then a tampered URL, then the archive uploaded back.
            let archive = scratch.path + "/archive.tar.gz"
            #expect(try await cli(["download", id, "-o", archive]).status == 0)
            let url = try await cli(["download", id, "--url"]).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            for link in [url, url.replacingOccurrences(of: "sig=", with: "sig=A")] {
                let fetched = try await runCommand("/usr/bin/curl", ["-sS", "-i", "--cacert", TestServer.caFile, "-o", "-", "-r", "0-99", link])
                told += [fetched.standardOutput, fetched.standardError]
            }
            #expect(try await cli(["upload", archive, "--env", "\(ns)/shop-production", "--comment", "uploaded"]).status == 0)
            #expect(try await cli(["env", "stop", "\(ns)/shop-production"]).status == 0)
            #expect(try await cli(["restore", id, "--to", "shop-production", "--wait"]).status == 0)
            #expect(try await cli(["env", "start", "\(ns)/shop-production"]).status == 0)
            let slow = try await cli(["create", "--env", "\(ns)/shop-production", "--json"])
            if let job = (try? JSONSerialization.jsonObject(with: Data(slow.standardOutput.utf8)) as? [String: Any])?["job_id"] as? String {
                _ = try await cli(["job", "cancel", job])
            }
            _ = try await cli(["delete", id])
            // Refused calls: a wrong token, another namespace, a bad request.
            _ = try await cli(["info"], token: "bkd_" + String(repeating: "A", count: 43))
            _ = try await cli(["list", "--env", "other/shop-production"])
            _ = try await cli(["env", "register", "\(ns)/bad", "--app", "x", "--file-store", "/nonexistent",
                         "--database-url", "host=127.0.0.1 password=\(appPassword) service=x"], token: server.platformToken)
            _ = try await cli(["env", "delete", "\(ns)/broken"], token: server.platformToken)

            // What the admin listener tells whoever reaches it: metrics and readiness.
            for page in ["metrics", "readyz", "healthz"] {
                told.append(try await runCommand("/usr/bin/curl", ["-sS", "http://\(server.adminAddress)/\(page)"]).standardOutput)
            }
            #expect(told.last == "ok\n" && told.dropLast(2).last?.contains("backupd_rpc_calls_total") == true)

            // A process whose store secret is wrong: the store refuses it, and the job says so without the secret.
            await server.stop()
            let wrong = try await TestServer.start(arguments: ["--log-level", "trace"], catalogDatabase: catalog, storage: storage,
                                                   adminToken: server.adminToken, platformToken: server.platformToken,
                                                   environment: ["BACKUPD_CATALOG": catalogURL, "AWS_SECRET_ACCESS_KEY": wrongStoreSecret],
                                                   downloadKeys: keys)
            let refused = try await wrong.backupctl(["create", "--env", "\(ns)/shop-production", "--wait"])
            told += [refused.standardOutput, refused.standardError]
            #expect(refused.status != 0 && (refused.standardOutput + refused.standardError).contains("object store refused"),
                    "\(refused.standardOutput) \(refused.standardError)")
            // Its readiness names the store's refusal, without the secret.
            let readiness = try await runCommand("/usr/bin/curl", ["-sS", "http://\(wrong.adminAddress)/readyz"]).standardOutput
            told += [readiness, try await runCommand("/usr/bin/curl", ["-sS", "http://\(wrong.adminAddress)/metrics"]).standardOutput]
            await wrong.stop()
            wrongSecretLog = wrong.log
        }
        await server.stop()
        let log = server.log + wrongSecretLog
        await server.remove()

        // --help and config check, with the secrets in the environment they read them from.
        let check = ["config", "check", "--config", configuration, "--blob-dir", blobs.path, "--blob-store", "s3://bucket/prefix",
                     "--s3-access-key-id", "AKIATEST", "--cert", "\(projectRoot)/certs/dev/server.crt", "--key", "\(projectRoot)/certs/dev/server.key"]
        for (tool, arguments) in [("backupd", ["serve", "--help"]), ("backupd", ["token", "create", "--help"]), ("backupctl", ["--help"]),
                                  ("backupctl", ["help", "create"]), ("backupd", check), ("backupd", check + ["--max-jobs", "x"])] {
            let help = try await runCommand("\(binDirectory)/\(tool)", arguments, environment: [
                "BACKUPD_CATALOG": catalogURL, "BACKUPCTL_TOKEN": server.adminToken, "AWS_SECRET_ACCESS_KEY": storeSecret,
            ])
            told += [help.standardOutput, help.standardError]
        }

        #expect(told.contains { $0.contains("password='REDACTED'") }, "config check did not show the catalog's settings")
        #expect(log.contains("trace") || log.contains("debug"), "the log is not at its most verbose level")
        #expect(log.contains("job failed"), "the failing job is not in the log")
        for secret in secrets {
            #expect(!log.contains(secret), "the log holds a secret (\(secret.prefix(12))…)")
            for text in told {
                #expect(!text.contains(secret), "a client was shown a secret (\(secret.prefix(12))…) in: \(text.prefix(400))")
            }
        }
    }
}
