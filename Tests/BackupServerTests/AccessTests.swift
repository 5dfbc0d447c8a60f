import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Who may call what, and what a caller learns about what is not theirs.
@Suite(.serialized) struct AccessTests {
    /// The outcome of a call: OK, or the status it ended with.
    private func outcome(_ body: () async throws -> Void) async -> StatusCode {
        do {
            try await body()
            return .ok
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }

    /// One method of the matrix: the roles that may call it, the code an
    /// allowed caller gets with this request, the code a refused one gets.
    private struct Row {
        let method: String
        let allowed: Set<Role>
        let whenAllowed: StatusCode
        let whenRefused: [Role: StatusCode]
        let call: @Sendable (BackupClient) async throws -> Void

        init(_ method: String, _ allowed: Set<Role>, _ whenAllowed: StatusCode, platformRefusal: StatusCode = .permissionDenied,
             _ call: @escaping @Sendable (BackupClient) async throws -> Void) {
            self.method = method
            self.allowed = allowed
            self.whenAllowed = whenAllowed
            self.whenRefused = [.viewer: .permissionDenied, .operator: .permissionDenied, .admin: .permissionDenied,
                                .platform: platformRefusal]
            self.call = call
        }
    }

    @Test func everyRoleReachesExactlyItsMethods() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                // finishedBackup stopped it; restores are then refused only for the backup's package version.
                try await server.withClient { client in
                    _ = try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.packageVersion = "9" })
                }
                var tokens: [Role: String] = [.admin: server.adminToken, .platform: server.platformToken]
                tokens[.viewer] = try await server.makeToken(.viewer, name: "matrix-viewer")
                tokens[.operator] = try await server.makeToken(.operator, name: "matrix-operator")
                let catalog = server.catalogDatabase
                /// A failed backup of its own for each call that deletes or edits one.
                let spareBackup: @Sendable () throws -> String = {
                    let id = UUID().uuidString.lowercased()
                    try TestPostgres.query(catalog, "INSERT INTO snapshots (id, environment_id, status, kind) SELECT $1, id, 'failed', 'on-demand' FROM environments", id)
                    return id
                }
                let spareToken: @Sendable () async throws -> String = {
                    try await server.withClient { client in
                        try await client.unary(Backups.createToken, .with { $0.namespace = "acme"; $0.role = .viewer; $0.name = "spare" }).token.id
                    }
                }
                let download = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id }) }
                let upload = try await server.withClient { try await startUpload($0, Array("matrix".utf8)) }
                let everyone: Set<Role> = [.viewer, .operator, .admin, .platform]
                let namespaceRoles: Set<Role> = [.viewer, .operator, .admin]
                let rows: [Row] = [
                    Row("ServerInfo", everyone, .ok) { _ = try await $0.unary(Backups.serverInfo, ServerInfoRequest()) },
                    Row("RegisterEnvironment", [.platform], .invalidArgument) {
                        _ = try await $0.unary(Backups.registerEnvironment, .with { $0.namespace = "acme"; $0.name = "matrix"; $0.databaseURL = "dbname=x" })
                    },
                    Row("ListEnvironments", everyone, .ok) { _ = try await $0.unary(Backups.listEnvironments, .with { $0.namespace = "acme" }) },
                    Row("GetEnvironment", everyone, .ok) {
                        _ = try await $0.unary(Backups.getEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                    },
                    Row("UpdateEnvironment (app)", [.admin, .platform], .ok) {
                        _ = try await $0.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.app = "shop" })
                    },
                    Row("UpdateEnvironment (location)", [.platform], .invalidArgument) {
                        _ = try await $0.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.fileStorePath = "files" })
                    },
                    Row("DeleteEnvironment", [.platform], .failedPrecondition) {
                        _ = try await $0.unary(Backups.deleteEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                    },
                    Row("SetEnvironmentState", [.operator, .admin, .platform], .invalidArgument) {
                        _ = try await $0.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                    },
                    Row("CreateBackup", [.operator, .admin], .notFound) {
                        _ = try await $0.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "nowhere" })
                    },
                    Row("ListBackups", namespaceRoles, .ok) { _ = try await $0.unary(Backups.listBackups, .with { $0.namespace = "acme" }) },
                    Row("GetBackup", namespaceRoles, .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.getBackup, .with { $0.id = backup.id })
                    },
                    Row("UpdateBackup", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        let id = try spareBackup()
                        _ = try await $0.unary(Backups.updateBackup, .with { $0.id = id; $0.comment = "matrix" })
                    },
                    Row("DeleteBackup", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        let id = try spareBackup()
                        _ = try await $0.unary(Backups.deleteBackup, .with { $0.id = id })
                    },
                    Row("GetJob", namespaceRoles, .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.getJob, .with { $0.id = backup.jobID })
                    },
                    Row("WatchJob", namespaceRoles, .ok, platformRefusal: .notFound) {
                        try await $0.serverStreaming(Backups.watchJob, .with { $0.id = backup.jobID }) { _ in }
                    },
                    // The backup's job has ended: one allowed to cancel it hears that it cannot be cancelled any more.
                    Row("CancelJob", [.operator, .admin], .failedPrecondition, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.cancelJob, .with { $0.id = backup.jobID })
                    },
                    Row("RestoreBackup", [.operator, .admin], .failedPrecondition, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.restoreBackup, .with { $0.backupID = backup.id; $0.targetEnvironment = "shop-production"; $0.targetNamespace = "acme" })
                    },
                    Row("ListActivity", namespaceRoles, .ok) { _ = try await $0.unary(Backups.listActivity, .with { $0.namespace = "acme" }) },
                    Row("CreateToken", [.admin, .platform], .ok) {
                        _ = try await $0.unary(Backups.createToken, .with { $0.namespace = "acme"; $0.role = .viewer; $0.name = "matrix" })
                    },
                    Row("CreateToken (platform)", [.platform], .ok) {
                        _ = try await $0.unary(Backups.createToken, .with { $0.role = .platform; $0.name = "matrix-platform" })
                    },
                    Row("ListTokens", [.admin, .platform], .ok) { _ = try await $0.unary(Backups.listTokens, .with { $0.namespace = "acme" }) },
                    Row("RevokeToken", [.admin, .platform], .ok) {
                        let id = try await spareToken()
                        _ = try await $0.unary(Backups.revokeToken, .with { $0.id = id })
                    },
                    Row("VerifyBackup", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                    },
                    Row("RequestDownload", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                    },
                    Row("GetDownload", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.getDownload, .with { $0.id = download.id })
                    },
                    Row("StartUpload", [.operator, .admin], .invalidArgument) { _ = try await $0.unary(Backups.startUpload, .with { $0.namespace = "acme" }) },
                    Row("GetUpload", [.operator, .admin], .ok, platformRefusal: .notFound) {
                        _ = try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id })
                    },
                    Row("AbandonUpload", [.operator, .admin, .platform], .ok) {
                        _ = try await $0.unary(Backups.abandonUpload, .with { $0.uploadID = upload.id })
                    },
                    Row("GetSchedule", namespaceRoles, .ok) {
                        _ = try await $0.unary(Backups.getSchedule, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    },
                    Row("SetSchedule", [.admin], .ok) {
                        _ = try await $0.unary(Backups.setSchedule, .with {
                            $0.schedule.namespace = "acme"; $0.schedule.environment = "shop-production"; $0.schedule.enabled = true
                        })
                    },
                ]
                for row in rows {
                    for role in [Role.viewer, .operator, .admin, .platform] {
                        let code = await outcome { try await server.withClient(token: tokens[role]!) { try await row.call($0) } }
                        let expected = row.whenAllowed == .unimplemented ? .unimplemented
                            : row.allowed.contains(role) ? row.whenAllowed : row.whenRefused[role]!
                        #expect(code == expected, "\(row.method) as \(role): \(code), expected \(expected)")
                    }
                }
                // A platform token names its namespace; it has none of its own.
                let unnamed = await outcome {
                    _ = try await server.withClient(token: server.platformToken) { try await $0.unary(Backups.listEnvironments, ListEnvironmentsRequest()) }
                }
                #expect(unnamed == .invalidArgument)
            }
        }
    }

    @Test func anotherNamespacesIdsAnswerExactlyAsUnknownOnes() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let stranger = try await server.makeToken(.admin, namespace: "other", name: "stranger")
                let adminTokenID = try await TestPostgres.query(server.catalogDatabase, "SELECT id FROM tokens WHERE name = 'test-admin'")[0].string("id")
                let unknown = UUID().uuidString.lowercased()
                let download = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id }) }
                let upload = try await server.withClient { try await startUpload($0, Array("unknown ids".utf8)) }
                try await server.withClient(token: stranger) { client in
                    let calls: [(String, String, @Sendable (String) async throws -> Void)] = [
                        ("backup", backup.id, { @Sendable id in _ = try await client.unary(Backups.getBackup, .with { $0.id = id }) }),
                        ("backup", backup.id, { @Sendable id in _ = try await client.unary(Backups.deleteBackup, .with { $0.id = id }) }),
                        ("backup", backup.id, { @Sendable id in _ = try await client.unary(Backups.verifyBackup, .with { $0.id = id }) }),
                        ("job", backup.jobID, { @Sendable id in _ = try await client.unary(Backups.getJob, .with { $0.id = id }) }),
                        ("job", backup.jobID, { @Sendable id in _ = try await client.unary(Backups.cancelJob, .with { $0.id = id }) }),
                        ("token", adminTokenID, { @Sendable id in _ = try await client.unary(Backups.revokeToken, .with { $0.id = id }) }),
                        ("backup", backup.id, { @Sendable id in _ = try await client.unary(Backups.requestDownload, .with { $0.backupID = id }) }),
                        ("download", download.id, { @Sendable id in _ = try await client.unary(Backups.getDownload, .with { $0.id = id }) }),
                        ("upload", upload.id, { @Sendable id in _ = try await client.unary(Backups.getUpload, .with { $0.uploadID = id }) }),
                        ("upload", upload.id, { @Sendable id in _ = try await client.unary(Backups.abandonUpload, .with { $0.uploadID = id }) }),
                        ("upload", upload.id, { @Sendable id in
                            _ = try await client.call(Backups.uploadChunks, requests: [UploadChunk.with { $0.uploadID = id; $0.data = [1] }],
                                                      timeout: nil) { _ in }
                        }),
                    ]
                    for (what, id, call) in calls {
                        let foreign = await expectStatus(.notFound) { try await call(id) }
                        let missing = await expectStatus(.notFound) { try await call(unknown) }
                        #expect(foreign?.message == "\(what) \(id) does not exist")
                        #expect(missing?.message == "\(what) \(unknown) does not exist")
                    }
                }
                let untargeted = await expectStatus(.invalidArgument) {
                    _ = try await server.withClient { client in
                        try await client.unary(Backups.restoreBackup, .with { $0.backupID = backup.id; $0.targetNamespace = "acme" })
                    }
                }
                #expect(untargeted?.message == "target_environment is required")
                // Nothing of it changed.
                let stillThere = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = backup.id }) }
                #expect(stillThere.status == .finished)
                #expect(try await server.backupctl(["info"]).status == 0)
            }
        }
    }

    @Test func revokingATokenEndsItsOpenCalls() async throws {
        let dump = try GatedTool("pg_dump")
        try await withTestApp(empty: true) { app in
            try await withInProcessServer(configure: { $0.jobs.tools.pgDump = dump.path }) { server in
                defer { dump.release() }  // the job ends before the server's shutdown waits for it
                try await server.register(app)
                let viewer = try await server.makeToken(.viewer, name: "watcher")
                let created = try await server.withClient { try await createBackup($0) }
                let heard = Atomic(false)
                let watching = Task {
                    try await server.withClient(token: viewer) { client in
                        try await client.serverStreaming(Backups.watchJob, .with { $0.id = created.job.id }) { _ in heard.value = true }
                    }
                }
                // The watch is open once its first reading came.
                try await eventually(within: .seconds(30)) { heard.value }
                let tokenID = try await TestPostgres.query(server.catalogDatabase, "SELECT id FROM tokens WHERE name = 'watcher'")[0].string("id")
                _ = try await server.withClient { try await $0.unary(Backups.revokeToken, .with { $0.id = tokenID }) }
                let ended = await expectStatus(.unauthenticated) { try await watching.value }
                #expect(ended?.message.contains("revoked") == true)
                let job = try await server.withClient { try await $0.unary(Backups.getJob, .with { $0.id = created.job.id }) }
                #expect(!job.status.isTerminal, "the job itself goes on")
            }
        }
    }

    /// Out-of-range limits are refused naming the flag, before anything starts.
    @Test(arguments: [
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--idle-connection-timeout-seconds", "0"], "--idle-connection-timeout-seconds must be at least 1"),
        (["--namespace-job-share", "1.5"], "--namespace-job-share must be above 0 and at most 1"),
        (["--shutdown-grace-seconds=-1"], "--shutdown-grace-seconds may not be negative"),
        (["--die-after-restore-step", "later"], "--die-after-restore-step \"later\" is not one of"),
        (["--max-jobs=-1"], "--max-jobs may not be negative"),
        (["--s3-part-size-mib", "4"], "--s3-part-size-mib takes 5 to 5120"),
        (["--blob-store", "/var/blobs"], "--blob-store takes s3://BUCKET/PREFIX"),
        (["--blob-store", "s3://Not_A_Bucket/x"], "\"Not_A_Bucket\" is not an S3 bucket name"),
        (["--blob-store", "s3://backups/x", "--s3-endpoint", "ftp://store"], "--s3-endpoint is not an http or https URL"),
        (["--blob-store", "s3://backups/x"], "the object store needs an access key id"),
        (["--blob-store", "s3://backups/x", "--s3-access-key-id", "AKIDEXAMPLE"], "the object store needs a secret access key"),
        (["--blob-store", "s3://backups/x", "--s3-credentials-file", "/nonexistent/credentials"], "--s3-credentials-file /nonexistent/credentials cannot be read"),
    ])
    func serveRefusesLimitsOutOfRange(_ arguments: [String], _ message: String) throws {
        let refused = try runCommand("\(binDirectory)/backupd",
                                     ["serve", "--catalog", "dbname=none", "--blob-dir", "/nonexistent", "--cert", "c", "--key", "k"] + arguments)
        #expect(refused.status != 0)
        #expect(refused.standardError.contains(message), "\(refused.standardError)")
    }

    @Test func helpNeverShowsTheSecretsItReadsFromTheEnvironment() throws {
        let cli = try runCommand("\(binDirectory)/backupctl", ["list", "--help"],
                                 environment: ["BACKUPCTL_TOKEN": "token-secret-in-env", "BACKUPCTL_KEY": "/secret/key.pem"])
        #expect(cli.standardOutput.contains("BACKUPCTL_TOKEN"))
        #expect(!cli.standardOutput.contains("token-secret-in-env") && !cli.standardOutput.contains("/secret/key.pem"))
        let server = try runCommand("\(binDirectory)/backupd", ["serve", "--help"],
                                    environment: ["BACKUPD_CATALOG": "host=db password=catalog-secret-in-env"])
        #expect(server.standardOutput.contains("BACKUPD_CATALOG"))
        #expect(!server.standardOutput.contains("catalog-secret-in-env"))
    }

    @Test func tlsOffersOnlyForwardSecretAEADSuites() async throws {
        try await withInProcessServer(live: true) { server in
            func handshake(_ arguments: [String]) async throws -> Bool {
                try await runCommand("/usr/bin/timeout", ["10", "openssl", "s_client", "-connect", server.address, "-CAfile", TestServer.caFile,
                                                    "-verify_return_error", "-brief"] + arguments + ["-no_ign_eof"]).status == 0
            }
            let aead = try await handshake(["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
            let tls13 = try await handshake(["-tls1_3"])
            #expect(aead && tls13)
            // The CBC suites with SHA-1 MACs that TLS 1.2 used to accept.
            for weak in ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"] {
                let accepted = try await handshake(["-tls1_2", "-cipher", weak])
                #expect(!accepted, "\(weak) was accepted")
            }
        }
    }

    @Test func theCLIPrintsControlCharactersEscaped() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                // The API refuses control characters now; a row written before that still carries them.
                try await TestPostgres.query(server.catalogDatabase, "UPDATE environments SET app = $1", "shop\u{1B}[2J\u{1B}]0;owned\u{07}\r")
                for arguments in [["env", "show", "acme/shop-production"], ["env", "list"]] {
                    let shown = try await server.backupctl(arguments)
                    #expect(shown.status == 0)
                    #expect(!shown.standardOutput.unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\u{07}" || $0 == "\r" })
                    #expect(shown.standardOutput.contains("shop\\u{1B}[2J"), "\(shown.standardOutput)")
                }
            }
        }
    }
}
