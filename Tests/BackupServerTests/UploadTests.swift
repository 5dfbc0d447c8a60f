import BackupClient
import BackupRules
import BackupStorage
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// Starts an upload of `content` into the test namespace's environment `environment` (registered or not).
func startUpload(_ client: BackupClient, _ content: [UInt8], environment: String = "shop-production",
                 sha256: String? = nil) async throws -> Upload {
    try await client.unary(Backups.startUpload, .with {
        $0.namespace = TestServer.namespace; $0.environment = environment; $0.filename = "archive.tar.gz"
        $0.sizeBytes = UInt64(content.count); $0.sha256 = sha256 ?? ContentHash.of(content).hex; $0.comment = "from elsewhere"
    })
}

/// Sends `content[from..<to]` as one call's chunks of at most `chunk` bytes; returns the upload as the call ended it.
@discardableResult
func sendChunks(_ client: BackupClient, _ upload: Upload, _ content: [UInt8], from: Int, to: Int, chunk: Int = 64 * 1024) async throws -> Upload {
    let chunks = stride(from: from, to: to, by: chunk).map { start in
        UploadChunk.with { $0.uploadID = upload.id; $0.offset = UInt64(start); $0.data = Array(content[start..<min(start + chunk, to)]) }
    }
    var ended = Upload()
    try await client.call(Backups.uploadChunks, requests: chunks, timeout: nil) { ended = $0 }
    return ended
}

/// Receiving uploads: chunks at the right offsets, resumption, the announced
/// size and hash, who may send, and abandoned uploads.
@Suite(.serialized) struct UploadTests {
    static let content = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }

    private func spoolFiles(_ server: some BackupTestServer) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/uploads")
    }

    /// The bytes an upload's spool file holds: written and not counted yet
    /// (counted bytes are segments in the blob store).
    private func spoolBytes(_ server: some BackupTestServer, _ upload: Upload) -> Int {
        let spool = server.blobDirectory + "/uploads"
        return ((try? FileManager.default.contentsOfDirectory(atPath: spool)) ?? []).filter { $0.hasPrefix(upload.id + ".") }
            .reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: spool + "/" + $1)[.size] as? Int) ?? 0) }
    }

    /// Uploads abandoned after a second without a counted chunk, swept every 200 ms.
    @Test func chunksArriveInOrderAcrossCallsAndTheUploadResumesFromWhatWasReceived() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    #expect(upload.state == .receiving && upload.bytesReceived == 0 && upload.sizeBytes == 300_000)
                    #expect(upload.expiresUnixMS > upload.createdUnixMS && upload.comment == "from elsewhere")
                    // A first call that ends a third of the way in, as a dropped connection would leave it.
                    let partway = try await sendChunks(client, upload, Self.content, from: 0, to: 100_000)
                    #expect(partway.bytesReceived == 100_000)
                    // The client asks where to go on, and does.
                    let resumeAt = try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived
                    #expect(resumeAt == 100_000)
                    let done = try await sendChunks(client, upload, Self.content, from: Int(resumeAt), to: Self.content.count, chunk: 50_000)
                    #expect(done.bytesReceived == 300_000 && done.state == .receiving)
                    // What it received is in the store, in segments, and the spool file is empty.
                    #expect(try await receivedContent(server, upload) == Self.content)
                    #expect(spoolBytes(server, upload) == 0)
                    let activity = try await client.unary(Backups.listActivity, .with { $0.namespace = TestServer.namespace }).activity
                    #expect(activity.contains { $0.action == "upload" && $0.outcome == "STARTED" && $0.actor == "test-admin" })
                }
            }
        }
    }

    /// Helper finding: a call ended by its deadline (or a Cancel) held the
    /// upload's writer lease for a minute, so the client could not resume,
    /// and its status said "nothing was changed" of chunks it had kept.
    /// The deadline runs on the server's clock, moved by hand once the first
    /// chunk is on disk: the same order on a loaded machine as on an idle one.
    @Test func aCallEndedByItsDeadlineKeepsItsChunksSaysSoAndLetsGoAtOnce() async throws {
        let clock = ManualClock()
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.clock = clock }) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    var ended: RPCError?
                    do {
                        _ = try await client.clientStreaming(Backups.uploadChunks, timeout: .milliseconds(500)) { send in
                            try await send(.with { $0.uploadID = upload.id; $0.offset = 0; $0.data = Array(Self.content[0..<1000]) })
                            // The chunk written, the deadline passes with the next chunk unsent; the call's end counts it.
                            try await eventually(within: .seconds(60)) { spoolBytes(server, upload) >= 1000 }
                            try await eventually(within: .seconds(60)) {
                                clock.advance(by: .seconds(1))  // again, should the deadline's timer have started after the last move
                                return try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived == 1000
                            }
                        }
                    } catch let error as RPCError {
                        ended = error
                    }
                    #expect(ended?.code == .deadlineExceeded && ended?.message.contains("the chunks it wrote whole are kept") == true,
                            "\(String(describing: ended))")
                    let kept = try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived
                    #expect(kept == 1000)
                    // At once, not after the writer lease's minute.
                    let done = try await sendChunks(client, upload, Self.content, from: Int(kept), to: Self.content.count)
                    #expect(done.bytesReceived == UInt64(Self.content.count))
                }
            }
        }
    }

    @Test func aChunkAtTheWrongOffsetOrPastTheSizeIsOutOfRangeAndChangesNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    try await sendChunks(client, upload, Self.content, from: 0, to: 1000)
                    let skipped = await expectStatus(.outOfRange) {
                        try await sendChunks(client, upload, Self.content, from: 2000, to: 3000)
                    }
                    #expect(skipped?.message == "chunk at offset 2000, but upload \(upload.id) expects offset 1000")
                    let repeated = await expectStatus(.outOfRange) { try await sendChunks(client, upload, Self.content, from: 0, to: 1000) }
                    #expect(repeated?.message == "chunk at offset 0, but upload \(upload.id) expects offset 1000")
                    let tooLong = Self.content + [1, 2, 3]
                    let past = await expectStatus(.outOfRange) {
                        try await sendChunks(client, upload, tooLong, from: 1000, to: tooLong.count, chunk: tooLong.count)
                    }
                    #expect(past?.message == "chunk of \(tooLong.count - 1000) bytes at offset 1000 goes past the upload's announced size of 300000 bytes")
                    #expect(try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived == 1000)
                    // A call refused partway keeps the chunks it wrote whole before the refusal.
                    let goodThenSkipped = [1000, 2000, 4000].map { start in
                        UploadChunk.with { $0.uploadID = upload.id; $0.offset = UInt64(start); $0.data = Array(Self.content[start..<(start + 1000)]) }
                    }
                    let refused = await expectStatus(.outOfRange) {
                        try await client.call(Backups.uploadChunks, requests: goodThenSkipped, timeout: nil) { _ in }
                    }
                    #expect(refused?.message == "chunk at offset 4000, but upload \(upload.id) expects offset 3000")
                    #expect(try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived == 3000)
                    // The rest, correctly, still completes it.
                    #expect(try await sendChunks(client, upload, Self.content, from: 3000, to: Self.content.count).bytesReceived == 300_000)
                }
            }
        }
    }

    /// Helper findings: empty chunks cost a write and a catalog update each
    /// and kept an upload alive without data; a complete upload re-read its
    /// whole file on every later call; a namespace's uploads were uncounted.
    @Test func emptyChunksChunksAfterTheEndAndTooManyUploadsAreRefused() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    let empty = await expectStatus(.invalidArgument) {
                        try await client.call(Backups.uploadChunks, requests: [UploadChunk.with { $0.uploadID = upload.id }], timeout: nil) { _ in }
                    }
                    #expect(empty?.message == "a chunk must carry data; this one is empty")
                    try await sendChunks(client, upload, Self.content, from: 0, to: Self.content.count)
                    let after = await expectStatus(.failedPrecondition) { try await sendChunks(client, upload, Self.content, from: 0, to: 10) }
                    #expect(after?.message == "upload \(upload.id) has received all its 300000 bytes; it takes no more chunks")
                    for _ in 0..<63 { _ = try await startUpload(client, [1]) }
                    let tooMany = await expectStatus(.resourceExhausted) { _ = try await startUpload(client, [1]) }
                    #expect(tooMany?.message == "namespace acme has 64 unfinished uploads, the most it may have; finish or abandon some first")
                }
            }
        }
    }

    @Test func aSHA256MismatchIsDataLossAndKeepsNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let announced = ContentHash.of(Array("something else".utf8)).hex
                    let upload = try await startUpload(client, Self.content, sha256: announced)
                    let lost = await expectStatus(.dataLoss) { try await sendChunks(client, upload, Self.content, from: 0, to: Self.content.count) }
                    #expect(lost?.message.hasSuffix("not the \(announced) announced; nothing was kept") == true)
                    let failed = try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id })
                    #expect(failed.state == .failed && failed.error == lost?.message)
                    #expect(try spoolFiles(server).isEmpty)
                    let afterwards = await expectStatus(.failedPrecondition) { try await sendChunks(client, upload, Self.content, from: 0, to: 10) }
                    #expect(afterwards?.message == "upload \(upload.id) is failed; chunks are taken only while it is receiving")
                }
            }
        }
    }

    @Test func badStartsAreRefusedNamingTheFieldAndRecordNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.uploads.maximumBytes = 1 << 20 }) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let cases: [(StatusCode, String, @Sendable () async throws -> Void)] = [
                        (.invalidArgument, "sha256 \"abc\" is not 64 lowercase hex digits", { _ = try await startUpload(client, [1], sha256: "abc") }),
                        (.invalidArgument, "size_bytes 0 is not between 1 and the limit of 1048576", { _ = try await startUpload(client, []) }),
                        (.invalidArgument, "size_bytes 2097152 is not between 1 and the limit of 1048576",
                         { _ = try await startUpload(client, [UInt8](repeating: 0, count: 2 << 20)) }),
                        (.notFound, "environment acme/nowhere does not exist", { _ = try await startUpload(client, [1], environment: "nowhere") }),
                    ]
                    for (code, message, call) in cases {
                        let refused = await expectStatus(code) { try await call() }
                        #expect(refused?.message == message)
                    }
                }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM uploads")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'upload'")[0].int64("n") == 0)
                #expect(try spoolFiles(server).isEmpty)
            }
        }
    }

    /// A tenant announcing uploads it never sends must not take the spool
    /// (or the disk under it, which the blob store may share) from others.
    @Test func unfinishedUploadsReserveTheirSizeAndANamespaceTakesAtMostHalfTheSpool() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.uploads.spoolBytes = 1_000_000 }) { server in
                try await server.register(app)
                try await server.withClient { client in
                    _ = try await startUpload(client, Self.content)
                    let refused = await expectStatus(.resourceExhausted) { _ = try await startUpload(client, Self.content) }
                    #expect(refused?.message == "namespace acme's unfinished uploads reserve 300000 of the 500000 bytes it may use "
                            + "(its share of the 1000000 the upload spool can hold now), and this one announces 300000; "
                            + "finish or abandon earlier uploads first")
                }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM uploads")[0].int64("n") == 1)
            }
            try await withInProcessServer(configure: { $0.uploads.reservedDiskBytes = 1 << 60 }) { server in
                try await server.register(app)
                let refused = await expectStatus(.resourceExhausted) { _ = try await server.withClient { try await startUpload($0, Self.content) } }
                #expect(refused?.message == "the server's disk for uploads has too little free space for an upload of 300000 bytes "
                        + "(it keeps \(1 << 60) bytes free); try again later")
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM uploads")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'upload'")[0].int64("n") == 0)
                #expect(try spoolFiles(server).isEmpty)
            }
        }
    }

    /// Helper finding: a client that cancelled StartUpload just after its
    /// reservation committed left the upload recorded (the withdrawal was
    /// cancelled with the call), an upload nobody could name or abandon that
    /// held the spool. The reservation and its withdrawal now run to their end.
    @Test func aStartCancelledAtAnyMomentLeavesNoReservationBehind() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.uploads.reservedDiskBytes = 1 << 60 }) { server in
                try await server.register(app)
                try await server.withClient { client in
                    for attempt in 0..<60 {
                        let call = Task { try await startUpload(client, Self.content) }
                        try await Task.sleep(for: .microseconds((attempt * 97) % 4000))
                        call.cancel()
                        _ = await call.result
                    }
                }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM uploads")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'upload'")[0].int64("n") == 0)
                #expect(try spoolFiles(server).isEmpty)
            }
        }
    }

    /// Issue 19: announcing an upload as large as the free disk reserved it
    /// all (the share was of the flag, not of the disk), so no other
    /// namespace could upload. The share is of what the disk can hold.
    @Test func oneNamespaceReservesAtMostItsShareOfWhatTheDiskCanHold() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient(token: server.platformToken) { client in
                    _ = try await client.unary(Backups.registerEnvironment, .with {
                        $0.namespace = "beta"; $0.name = "shop"; $0.app = "shop"; $0.databaseURL = app.connectionString
                        $0.fileStorePath = app.fileStore + "-beta"
                    })
                }
                var disk = statvfs()
                #expect(statvfs(server.blobDirectory, &disk) == 0)
                let usable = UInt64(disk.f_bavail) * UInt64(disk.f_frsize) - UploadSettings().reservedDiskBytes
                @Sendable func announce(_ client: BackupClient, namespace: String, environment: String, _ size: UInt64) async throws -> Upload {
                    try await client.unary(Backups.startUpload, .with {
                        $0.namespace = namespace; $0.environment = environment; $0.sizeBytes = size; $0.sha256 = ContentHash.of([]).hex
                    })
                }
                try await server.withClient { client in
                    let greedy = await expectStatus(.resourceExhausted) {
                        _ = try await announce(client, namespace: "acme", environment: "shop-production", usable / 10 * 9)
                    }
                    #expect(greedy?.message.contains("its share of the") == true, "\(String(describing: greedy))")
                    _ = try await announce(client, namespace: "acme", environment: "shop-production", usable / 100 * 45)
                }
                let beta = try await server.makeToken(.operator, namespace: "beta", name: "beta-operator")
                let other = try await server.withClient(token: beta) { client in
                    try await announce(client, namespace: "beta", environment: "shop", usable / 10 * 3)
                }
                #expect(other.state == .receiving)
            }
        }
    }

    /// AbandonUpload frees the reservation and removes the data at once;
    /// asked again it answers the upload as it stands; a finished upload
    /// cannot be abandoned; chunks after it are refused.
    @Test func anAbandonedUploadFreesItsReservationAndDataAtOnce() async throws {
        try await withTestApp { app in
            // No job runs, so a finished upload stays validating (seen in CI: its validation failed first, and a failed
            // upload may be abandoned).
            try await withInProcessServer(configure: { $0.uploads.spoolBytes = 1_000_000; $0.jobs.maximumConcurrentJobs = 0 }) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    try await sendChunks(client, upload, Self.content, from: 0, to: 100_000)
                    _ = await expectStatus(.resourceExhausted) { _ = try await startUpload(client, Self.content) }
                    let abandoned = try await client.unary(Backups.abandonUpload, .with { $0.uploadID = upload.id })
                    #expect(abandoned.state == .abandoned && abandoned.error.contains("test-admin"))
                    #expect(try spoolFiles(server).isEmpty)
                    let again = try await client.unary(Backups.abandonUpload, .with { $0.uploadID = upload.id })
                    #expect(again.state == .abandoned)
                    let late = await expectStatus(.failedPrecondition) {
                        try await sendChunks(client, upload, Self.content, from: 100_000, to: 110_000)
                    }
                    #expect(late != nil)
                    // Its reservation is free: the same size fits again.
                    let next = try await startUpload(client, Self.content)
                    let activity = try await client.unary(Backups.listActivity, .with { $0.namespace = TestServer.namespace })
                    #expect(activity.activity.contains { $0.outcome == "ABANDONED" && $0.detail.contains(upload.id) })
                    try await sendChunks(client, next, Self.content, from: 0, to: Self.content.count)
                    _ = try await client.unary(Backups.finishUpload, .with { $0.uploadID = next.id })
                    let validating = await expectStatus(.failedPrecondition) {
                        _ = try await client.unary(Backups.abandonUpload, .with { $0.uploadID = next.id })
                    }
                    #expect(validating?.message.contains("can no longer be abandoned") == true)
                }
                // The platform may give an upload up too; another namespace's id is unknown.
                let third = try await server.withClient { try await startUpload($0, Array(Self.content.prefix(1000))) }
                let byPlatform = try await server.withClient(token: server.platformToken) {
                    try await $0.unary(Backups.abandonUpload, .with { $0.uploadID = third.id })
                }
                #expect(byPlatform.state == .abandoned)
            }
        }
    }

    /// Issue 19: one byte a day kept an upload (and its reservation) alive.
    /// An upload must bring the minimum rate over each window, trickle or not.
    @Test func anUploadThatTricklesExpiresAtTheMinimumRate() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: {
                sweepingOften(&$0)
                $0.uploads.minimumRate = 10_000
                $0.uploads.rateWindow = .seconds(2)
            }) { server in
                try await server.register(app)
                let upload = try await server.withClient { try await startUpload($0, Self.content) }
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline {
                    let now = try await server.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                    if now.state != .receiving { break }
                    // Fifty bytes every 100 ms: 500 bytes a second, a twentieth of the minimum.
                    let offset = Int(now.bytesReceived)
                    _ = try? await server.withClient { try await sendChunks($0, upload, Self.content, from: offset, to: offset + 50) }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let ended = try await server.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(ended.state == .expired && ended.error.contains("less than the 20000 a window must bring"), "\(ended.error)")
                try await eventually(within: .seconds(10)) { try spoolFiles(server).isEmpty }
            }
        }
    }

    @Test func viewersMayNotUploadAndOneCallAtATimeSendsAnUploadsChunks() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let viewer = try await server.makeToken(.viewer, name: "looker")
                let refused = await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: viewer) { try await startUpload($0, Self.content) }
                }
                #expect(refused != nil)
                let upload = try await server.withClient { try await startUpload($0, Self.content) }
                // Two calls at once: one of them is told the other has it.
                let outcomes = await withTaskGroup(of: StatusCode.self) { group in
                    for _ in 0..<2 {
                        group.addTask {
                            do {
                                _ = try await server.withClient { try await sendChunks($0, upload, Self.content, from: 0, to: 200_000, chunk: 1000) }
                                return .ok
                            } catch let error as RPCError { return error.code } catch { return .unknown }
                        }
                    }
                    return await group.reduce(into: [StatusCode]()) { $0.append($1) }
                }
                #expect(outcomes.contains(.ok) && outcomes.allSatisfy { [.ok, .aborted, .outOfRange].contains($0) }, "\(outcomes)")
                let now = try await server.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(now.bytesReceived == 200_000)
            }
        }
    }

    @Test func anAbandonedUploadExpiresAndItsDataIsRemoved() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: sweepingOften) { server in
                try await server.register(app)
                let upload = try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    try await sendChunks(client, upload, Self.content, from: 0, to: 1000)
                    return upload
                }
                // Its lifetime passes (moved in the catalog, whose clock judges it: a loaded machine once took longer
                // than a one-second lifetime to send the first chunk).
                let segment = try #require(ContentHash(hex: try await TestPostgres.query(server.catalogDatabase, """
                    SELECT sha256 FROM upload_segments WHERE upload_id = $1
                    """, upload.id)[0].string("sha256")))
                try await TestPostgres.query(server.catalogDatabase, "UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = $1",
                                       upload.id)
                // Its segment is forgotten by the sweep and its blob collected.
                try await eventually(within: .seconds(20)) {
                    let rows = try await TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM upload_segments WHERE upload_id = $1", upload.id)
                    let stored = try await server.storedBlobs()
                    return rows.isEmpty && !stored.contains(segment)
                }
                #expect(try spoolFiles(server).isEmpty)
                let expired = try await server.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(expired.state == .expired && expired.error.contains("abandoned"))
                let activity = try await server.withClient { try await $0.unary(Backups.listActivity, .with { $0.namespace = TestServer.namespace }) }
                #expect(activity.activity.contains { $0.action == "upload" && $0.outcome == "EXPIRED" })
            }
        }
    }

    /// Seen in CI: chunks count in batches, and the sweep expired an upload
    /// between a chunk's write and its count; an upload a call is writing is not abandoned.
    @Test func anUploadACallIsWritingDoesNotExpire() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: sweepingOften) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    let abandoned = try await startUpload(client, Self.content)
                    func state(_ id: String) throws -> String {
                        try TestPostgres.query(server.catalogDatabase, "SELECT state FROM uploads WHERE id = $1", id)[0].string("state")
                    }
                    let ended = try await client.clientStreaming(Backups.uploadChunks) { send in
                        try await send(.with { $0.uploadID = upload.id; $0.offset = 0; $0.data = Array(Self.content[0..<1000]) })
                        try await eventually(within: .seconds(10)) { spoolBytes(server, upload) == 1000 }
                        // Written, not yet counted, and both uploads past their lifetime (moved in the catalog, whose
                        // clock judges it); once a sweep has expired the one nobody writes, it has passed this one by.
                        try await TestPostgres.query(server.catalogDatabase, "UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id IN ($1, $2)",
                                               upload.id, abandoned.id)
                        try await eventually(within: .seconds(20)) { try state(abandoned.id) == "expired" }
                        #expect(try state(upload.id) == "receiving")
                    }
                    #expect(ended.bytesReceived == 1000 && ended.state == .receiving)
                }
            }
        }
    }

    /// Helper finding (critical): a call whose writer lease had run out, not
    /// yet taken over, still counted its batch, and took into the store by
    /// its path the spool file the next call had just made: the next call's
    /// bytes under the first call's hash, in a store every namespace shares,
    /// so another tenant's later backups held corrupt content. A call's
    /// count is refused once its lease has run out, and each call writes a
    /// spool file of its own.
    @Test func aCallWhoseLeaseRanOutCountsNothingAndTheStoreHoldsOnlyWhatWasHashed() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    let stale = await expectStatus(.aborted) {
                        _ = try await client.clientStreaming(Backups.uploadChunks) { send in
                            try await send(.with { $0.uploadID = upload.id; $0.offset = 0; $0.data = Array(Self.content[0..<1000]) })
                            try await eventually(within: .seconds(30)) { spoolBytes(server, upload) == 1000 }
                            try await TestPostgres.query(server.catalogDatabase, """
                                UPDATE uploads SET writer_until = now() - interval '1 second' WHERE id = $1
                                """, upload.id)
                        }
                    }
                    #expect(stale?.message.contains("no longer this call's to write") == true, "\(String(describing: stale))")
                    #expect(try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id }).bytesReceived == 0)
                    let done = try await sendChunks(client, upload, Self.content, from: 0, to: Self.content.count)
                    #expect(done.bytesReceived == UInt64(Self.content.count))
                    #expect(try await receivedContent(server, upload) == Self.content)
                    // Every blob the store holds reads back as its hash says (storedContent checks it).
                    for blob in try await server.storedBlobs() { _ = try await server.storedContent(blob) }
                    #expect(spoolBytes(server, upload) == 0)
                }
            }
        }
    }

    /// Known limit of issue 21's review, closed: every call's last bytes
    /// became a segment (an object in the store and two catalog rows)
    /// however few, so calls of a byte each made an object a byte. An upload
    /// keeps at most 256 segments under a mebibyte; past them a call's tail
    /// under a mebibyte is not counted (the client sends it again), and the
    /// upload still finishes whole.
    @Test func callsOfAByteEachMakeAtMost256SmallSegments() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let upload = try await startUpload(client, Self.content)
                    let share = 256  // UploadReceipt.smallSegmentsPerUpload
                    for offset in 0..<(share + 4) {
                        let answer = try await sendChunks(client, upload, Self.content, from: min(offset, share), to: min(offset, share) + 1)
                        #expect(answer.bytesReceived == UInt64(min(offset + 1, share)), "call \(offset + 1)")
                    }
                    let segments = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM upload_segments WHERE upload_id = $1", upload.id)
                    #expect(segments[0].int64("n") == Int64(share))
                    let done = try await sendChunks(client, upload, Self.content, from: share, to: Self.content.count)
                    #expect(done.bytesReceived == UInt64(Self.content.count))
                    #expect(try await receivedContent(server, upload) == Self.content)
                }
            }
        }
    }

    /// Helper finding: a call cut off after some chunks counted none of them
    /// (its last count ran in the call's cancelled task) and kept the
    /// upload's lease for a minute, so the client could not resume at once.
    @Test func aCallCutOffCountsTheChunksItWroteAndLetsGoOfTheUpload() async throws {
        try await withTestApp { app in
            let server = try await TestServer.start()
            defer { Task { await server.remove() } }
            try await server.register(app)
            let upload = try await server.withClient { try await startUpload($0, Self.content) }
            let start = Frame(callID: 1, .start(.with {
                $0.method = Backups.uploadChunks.name
                $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
            }))
            let chunks = [0, 100_000].map { offset in
                Frame(callID: 1, .message(UploadChunk.with {
                    $0.uploadID = upload.id; $0.offset = UInt64(offset); $0.data = Array(Self.content[offset..<(offset + 100_000)])
                }.serializedBytes()))
            }
            try await openTLS(server).executeThenClose { _, outbound in
                try await outbound.write(encode([start] + chunks))
                try await eventually(within: .seconds(30)) { spoolBytes(server, upload) == 200_000 }
            }
            // The connection closed in the middle of the call: what it wrote counts.
            try await eventually(within: .seconds(10)) {
                try TestPostgres.query(server.catalogDatabase, "SELECT received FROM uploads WHERE id = $1", upload.id)[0].int64("received") == 200_000
            }
            // At once, not a minute later: the cut-off call no longer holds the upload.
            let done = try await server.withClient { try await sendChunks($0, upload, Self.content, from: 200_000, to: Self.content.count) }
            #expect(done.bytesReceived == 300_000)
            await server.remove()
        }
    }

    /// Helper findings: each silent UploadChunks call kept its last chunk in
    /// memory (300 calls took backupd to 1.3 GB) and the spool file's
    /// descriptor for the call's life.
    @Test func silentUploadCallsHoldNeitherTheirChunksNorDescriptors() async throws {
        try await withTestApp { app in
            // One malloc arena: memory one batch freed is what the next reuses, so growth is what is held.
            let server = try await TestServer.start(environment: ["MALLOC_ARENA_MAX": "1"])
            defer { Task { await server.remove() } }
            do {
                try await server.register(app)
                let chunk = Secure.randomBytes(1 << 20)
                let content = chunk + chunk
                let uploads = try await server.withClient { client in
                    try await (0..<64).asyncMap { _ in try await startUpload(client, content) }
                }
                /// Opens calls on one connection, each sending 1 MiB of one upload and then nothing (no half-close),
                /// and waits until the server has written every chunk.
                func silentCalls(_ batch: ArraySlice<Upload>) async throws -> Task<Void, any Error> {
                    var frames: [Frame] = []
                    for (index, upload) in batch.enumerated() {
                        let id = UInt32(index + 1)
                        frames.append(Frame(callID: id, .start(.with {
                            $0.method = Backups.uploadChunks.name
                            $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
                        })))
                        frames.append(Frame(callID: id, .message(UploadChunk.with { $0.uploadID = upload.id; $0.data = chunk }.serializedBytes())))
                    }
                    let channel = try await openTLS(server)
                    let holding = Task { try await channel.executeThenClose { _, outbound in
                        try await outbound.write(encode(frames))
                        try await Task.sleep(for: .seconds(600))
                    } }
                    // Written, though not yet counted: a call's chunks count a batch at a time, or when it ends.
                    try await eventually(within: .seconds(30)) {
                        batch.allSatisfy { spoolBytes(server, $0) == 1 << 20 }
                    }
                    return holding
                }
                // The first 32 calls warm the allocator; the next 32 must not add their chunks to what the server holds.
                let first = try await silentCalls(uploads[0..<32])
                defer { first.cancel() }
                let baseline = residentBytes(server.processIdentifier)
                let second = try await silentCalls(uploads[32..<64])
                defer { second.cancel() }
                let spool = server.blobDirectory + "/uploads"
                let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(server.processIdentifier)/fd")) ?? []
                let open = fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(server.processIdentifier)/fd/\($0)") }
                    .filter { $0.contains(spool) }
                #expect(open.isEmpty, "\(open.count) spool files held open")
                let growth = residentBytes(server.processIdentifier) - baseline
                // Held chunks would be 32 MiB on their own; the rest (TLS, call state, the allocator) measured 10–16 MiB.
                #expect(growth < 24 << 20, "32 more silent calls of 1 MiB grew the server by \(growth >> 20) MiB")
                // Another call may not take over an upload while its silent call holds the lease.
                let held = await expectStatus(.aborted) {
                    _ = try await server.withClient { try await sendChunks($0, uploads[0], content, from: 1 << 20, to: 2 << 20) }
                }
                #expect(held?.message.contains("one call at a time") == true)
            }
            await server.remove()
        }
    }
}
