import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// Protobuf encoding by hand, for requests that `FieldMap` would never
/// write (a NUL inside a string, an enum number the API does not have).
enum RawProtobuf {
    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var bytes: [UInt8] = []
        repeat {
            bytes.append(UInt8(value & 0x7f) | (value > 0x7f ? 0x80 : 0))
            value >>= 7
        } while value > 0
        return bytes
    }

    static func field(_ number: UInt32, _ bytes: [UInt8]) -> [UInt8] {
        varint(UInt64(number) << 3 | 2) + varint(UInt64(bytes.count)) + bytes
    }

    static func field(_ number: UInt32, _ text: String) -> [UInt8] { field(number, Array(text.utf8)) }

    static func field(_ number: UInt32, varint value: UInt64) -> [UInt8] {
        varint(UInt64(number) << 3) + varint(value)
    }

    /// A start frame of call 1, with raw metadata bytes, one entry per value.
    static func startFrame(_ method: String, authorization: [UInt8]...) -> [UInt8] {
        let metadata = authorization.flatMap { field(2, field(1, "authorization") + field(2, $0)) }
        return field(1, varint: 1) + field(2, field(1, method) + metadata)
    }
}

/// One unary call on a raw connection: a start frame as given, one request
/// message, half-close; returns the call's status.
func rawUnary(_ server: some WireTestServer, start: [UInt8], request: [UInt8]) async throws -> CallStatus? {
    var bytes = ByteBuffer()
    bytes.writeInteger(UInt32(start.count))
    bytes.writeBytes(start)
    FrameEncoder().encode(data: Frame(callID: 1, .message(request)), out: &bytes)
    FrameEncoder().encode(data: Frame(callID: 1, .halfClose), out: &bytes)
    return try await rawCall(server, send: bytes) { frame, _ -> CallStatus? in
        guard frame.callID == 1, case .status(let status) = frame.kind else { return nil }
        return status
    }
}

@Suite(.serialized) struct InputLimitsTests {
    private func registerQuery(_ server: some BackupTestServer, _ app: TestApp, _ name: String, _ query: String) async throws -> RPCError? {
        do {
            _ = try await server.withClient(token: server.platformToken) { client in
                try await client.unary(Backups.registerEnvironment, .with {
                    $0.namespace = "acme"; $0.name = name; $0.app = "shop"; $0.databaseURL = app.connectionString
                    $0.fileStorePath = app.fileStore + "-" + name; $0.fileQuery = query
                })
            }
            return nil
        } catch let error as RPCError {
            return error
        }
    }

    private func backupError(_ server: some BackupTestServer, _ environment: String) async throws -> String {
        try await server.withClient { client in
            let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = environment })
            let job = try await waitForJob(created.job.id, on: client)
            #expect(job.status == .failed)
            return job.error
        }
    }

    @Test func theFileQueryIsOneSelectThatCanCallNothingAndIsBoundedInTimeAndRows() async throws {
        try await withTestApp { app in
            try await TestPostgres.query(app.database, """
                CREATE VIEW many_files AS SELECT md5(i::text) AS key FROM generate_series(1, 1000000) AS i;
                """)
            try await TestPostgres.query(app.database, """
                CREATE VIEW slow_files AS SELECT "__uuid__" AS key FROM "system$filedocument" WHERE pg_sleep(0.1) IS NOT NULL
                """)
            try await TestPostgres.query(app.database, """
                CREATE VIEW null_files AS SELECT CASE WHEN id % 10 = 0 THEN NULL ELSE "__uuid__" END AS key FROM "system$filedocument"
                """)
            try await TestPostgres.query(app.database, "CREATE VIEW odd_files AS SELECT '../../etc/passwd'::text AS key")
            try await withTestServer(arguments: ["--file-query-timeout-seconds", "2", "--max-files-per-backup", "100000"]) { server in
                let marker = "/tmp/backupd-pwned-\(UUID().uuidString)"
                let refused = [
                    "COPY (SELECT 1) TO PROGRAM 'touch \(marker)'",
                    "SELECT pg_read_file('/etc/passwd')",
                    "SELECT \"__uuid__\" FROM \"system$filedocument\" WHERE pg_sleep(30) IS NULL",
                    "SELECT \"__uuid__\" FROM \"system$filedocument\"; DROP TABLE \"shop$order\"",
                    "SELECT key FROM (SELECT \"__uuid__\" AS key FROM \"system$filedocument\") AS s",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
                    "SELECT \"__uuid__\" FROM \"system$filedocument\" -- comment",
                ]
                for (index, query) in refused.enumerated() {
                    let started = ContinuousClock.now
                    let error = try await registerQuery(server, app, "refused-\(index)", query)
                    #expect(error?.code == .invalidArgument, "\(query)")
                    #expect(error?.message.contains("file_query") == true, "\(query)")
                    #expect(ContinuousClock.now - started < .seconds(20), "\(query) ran")
                }
                #expect(!FileManager.default.fileExists(atPath: marker))
                await #expect(try TestPostgres.query(app.database, "SELECT count(*) AS n FROM \"shop$order\"")[0].string("n") == "5000")

                // What is accepted is stored as it runs: every name quoted.
                #expect(try await registerQuery(server, app, "many", "select key from many_files") == nil)
                let stored = try await TestPostgres.query(server.catalogDatabase, "SELECT file_query FROM environments WHERE name = 'many'")
                #expect(stored[0].string("file_query") == "SELECT \"key\" FROM \"many_files\"")

                // A million rows stop at the cap, without the memory a million keys would take.
                let before = try residentKiB(server.processIdentifier, "VmRSS")
                let tooMany = try await backupError(server, "many")
                #expect(tooMany.contains("more than 100000 rows"), "\(tooMany)")
                let peak = try residentKiB(server.processIdentifier, "VmHWM")
                #expect(peak - before < 64 * 1024, "backupd grew from \(before) KiB to a peak of \(peak) KiB")

                #expect(try await registerQuery(server, app, "slow", "SELECT key FROM slow_files") == nil)
                let slow = try await backupError(server, "slow")
                #expect(slow.contains("longer than its timeout of 2s"), "\(slow)")

                #expect(try await registerQuery(server, app, "nulls", "SELECT key FROM null_files") == nil)
                let nulls = try await backupError(server, "nulls")
                #expect(nulls.contains("32 of the file query's 320 rows have a NULL or empty key"), "\(nulls)")

                #expect(try await registerQuery(server, app, "odd", "SELECT key FROM odd_files") == nil)
                let odd = try await backupError(server, "odd")
                #expect(odd.contains("1 of the file query's 1 rows are not storage keys") && !odd.contains("passwd"), "\(odd)")
            }
        }
    }

    @Test func oversizedStringsNULsAndUnknownEnumValuesAreRefusedNamingTheField() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let long = await expectStatus(.invalidArgument) {
                        _ = try await createBackup(client, comment: String(repeating: "x", count: 5000))
                    }
                    #expect(long?.message == "comment is 5000 bytes long; the limit is 4096 bytes")
                    let name = await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.listBackups, .with { $0.namespace = String(repeating: "n", count: 200) })
                    }
                    #expect(name?.message.contains("namespace") == true && name?.message.contains("128") == true)
                    let escape = await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.createToken, .with { $0.namespace = "acme"; $0.role = .viewer; $0.name = "ops\u{1B}[2J" })
                    }
                    #expect(escape?.message == "name contains the control character U+001B")
                    let unnamed = await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.getEnvironment, .with { $0.name = "shop-production" })
                    }
                    #expect(unnamed?.message == "namespace is required")
                    let nothing = await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                    }
                    #expect(nothing?.message.contains("nothing to update") == true)
                }
                let token = Array("Bearer \(server.adminToken)".utf8)
                let nulInComment = RawProtobuf.field(1, "acme") + RawProtobuf.field(2, "shop-production")
                    + RawProtobuf.field(3, Array("fine".utf8) + [0] + Array("hidden".utf8))
                let nul = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.createBackup.name, authorization: token),
                                             request: nulInComment)
                #expect(nul?.code == .invalidArgument && nul?.message == "comment contains a NUL byte", "\(String(describing: nul))")

                let badUTF8 = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.createBackup.name, authorization: token),
                                                 request: RawProtobuf.field(1, "acme") + RawProtobuf.field(2, [0xff, 0xfe]))
                #expect(badUTF8?.code == .invalidArgument && badUTF8?.message.contains("environment is not valid UTF-8") == true)

                // A token followed by a NUL and anything else does not authenticate.
                let smuggled = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.serverInfo.name, authorization: token + [0] + Array("junk".utf8)),
                                                  request: [])
                #expect(smuggled?.code == .invalidArgument && smuggled?.message.contains("NUL") == true, "\(String(describing: smuggled))")

                let twice = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.serverInfo.name, authorization: Array("Bearer nobody".utf8), token),
                                               request: [])
                #expect(twice?.code == .unauthenticated && twice?.message.contains("more than one authorization") == true)

                let huge = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.listBackups.name, authorization: token),
                                              request: RawProtobuf.field(1, "acme") + RawProtobuf.field(5, varint: 1 << 32 | 1))
                #expect(huge?.code == .invalidArgument && huge?.message == "page_size is 4294967297, above the largest uint32")

                let kind = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.listBackups.name, authorization: token),
                                              request: RawProtobuf.field(1, "acme") + RawProtobuf.field(3, varint: 99))
                #expect(kind?.code == .invalidArgument && kind?.message.contains("kind has value 99") == true, "\(String(describing: kind))")
                let state = try await rawUnary(server, start: RawProtobuf.startFrame(Backups.setEnvironmentState.name, authorization: token),
                                               request: RawProtobuf.field(1, "acme") + RawProtobuf.field(2, "shop-production")
                                                   + RawProtobuf.field(3, varint: 7))
                #expect(state?.code == .invalidArgument && state?.message.contains("state has value 7") == true)

                // Nothing of it was written.
                let jobs = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs")
                #expect(jobs[0].string("n") == "0")
                let environment = try await server.withClient { client in
                    try await client.unary(Backups.getEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                }
                #expect(environment.state == .running)
            }
        }
    }

    @Test func listsWhoseRowsExceedOneFramePageWithinIt() async throws {
        // Each list keeps to the frame limit and continues with a page token.
        try await withTestApp { app in
            try await withInProcessServer(live: true, configure: { $0.maxFrameBytes = 65536 }) { server in
                try await server.register(app)
                let comment = String(repeating: "c", count: 4000)
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO snapshots (id, environment_id, status, kind, comment)
                    SELECT gen_random_uuid(), id, 'failed', 'on-demand', $1 FROM environments, generate_series(1, 60)
                    """, comment)
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO activity (namespace, environment, action, outcome, detail)
                    SELECT 'acme', 'shop-production', 'backup', 'FAILED', $1 FROM generate_series(1, 60)
                    """, comment)
                try await server.withClient { client in
                    var ids: [String] = []
                    var token = ""
                    var pages = 0
                    repeat {
                        let page = try await client.unary(Backups.listBackups, .with { $0.namespace = "acme"; $0.pageSize = 500; $0.pageToken = token })
                        #expect(page.serializedBytes().count <= 65536)
                        #expect(!page.backups.isEmpty)
                        ids += page.backups.map(\.id)
                        token = page.nextPageToken
                        pages += 1
                    } while !token.isEmpty && pages < 20
                    #expect(pages > 1 && ids.count == 60 && Set(ids).count == 60)

                    var activity = 0
                    token = ""
                    pages = 0
                    repeat {
                        let page = try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.pageSize = 500; $0.pageToken = token })
                        #expect(page.serializedBytes().count <= 65536)
                        activity += page.activity.count
                        token = page.nextPageToken
                        pages += 1
                    } while !token.isEmpty && pages < 20
                    #expect(pages > 1 && activity >= 60)
                }

                // Environments and tokens page the same way.
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO environments (namespace, name, app, database_url, file_store_path, file_query, state)
                    SELECT 'acme', 'env-' || i, 'shop', 'host=db', '/srv/env-' || i, $1, 'stopped' FROM generate_series(1, 60) AS i
                    """, comment)
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO tokens (id, name, namespace, role, secret_sha256)
                    SELECT gen_random_uuid(), 'token-' || i, 'acme', 'viewer', md5(i::text) FROM generate_series(1, 25) AS i
                    """)
                try await server.withClient { client in
                    var names: [String] = []
                    var token = ""
                    var pages = 0
                    repeat {
                        let page = try await client.unary(Backups.listEnvironments, .with { $0.namespace = "acme"; $0.pageSize = 500; $0.pageToken = token })
                        #expect(page.serializedBytes().count <= 65536)
                        names += page.environments.map(\.name)
                        token = page.nextPageToken
                        pages += 1
                    } while !token.isEmpty && pages < 20
                    #expect(pages > 1 && names.count == 61 && Set(names).count == 61 && names == names.sorted())

                    var tokens: [String] = []
                    token = ""
                    pages = 0
                    repeat {
                        let page = try await client.unary(Backups.listTokens, .with { $0.namespace = "acme"; $0.pageSize = 10; $0.pageToken = token })
                        tokens += page.tokens.map(\.id)
                        token = page.nextPageToken
                        pages += 1
                    } while !token.isEmpty && pages < 20
                    #expect(pages == 3 && tokens.count == 26 && Set(tokens).count == 26)
                }
            }
        }
    }
}

/// A line of /proc/PID/status, in KiB.
func residentKiB(_ pid: Int32, _ field: String) throws -> Int {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    let line = try #require(status.split(separator: "\n").first { $0.hasPrefix(field + ":") })
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
}
