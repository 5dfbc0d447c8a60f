import BackupCatalog
import BackupRules
import BackupStorage
@testable import BackupServer
import BackupWire
import Logging
import Testing

/// The RPC core without sockets: a router with test routes, driven through
/// the dispatcher as a connection would drive it.
@Suite struct DispatcherTests {
    static let caller = Caller(tokenID: "t", tokenName: "tester", namespace: "acme", role: .operator)

    private func dispatcher() -> RPCDispatcher {
        var router = RPCRouter(requestTimeout: .milliseconds(300))
        router.unary(Backups.getBackup) { request, context in
            try context.authorize(.viewer, in: "acme")
            if request.id == "slow" { try await Task.sleep(for: .seconds(30)) }
            if request.id == "missing" { throw BackupError.notFound("backup missing does not exist") }
            if request.id == "crash" { throw CancellationError() }
            return .with { $0.id = request.id; $0.comment = context.caller.tokenName }
        }
        router.clientStreaming(Backups.uploadChunks, keptWhenCutShort: "the chunks it wrote whole are kept") { chunks, _ in
            var received: UInt64 = 0
            for try await chunk in chunks {
                guard chunk.offset == received else { throw BackupError.invalidArgument("chunk at \(chunk.offset), expected \(received)") }
                received += UInt64(chunk.data.count)
            }
            return .with { $0.bytesReceived = received }
        }
        router.unary(Backups.deleteBackup) { _, context in
            try context.authorize(.admin, in: "acme")
            return DeleteBackupResponse()
        }
        return RPCDispatcher(router: router, logger: Logger(label: "test")) { secret in
            secret == "good" ? Self.caller : nil
        }
    }

    /// A unary call whose request (or half-close) never comes ends, rather
    /// than holding its slot for as long as the client likes.
    @Test func aCallWhoseRequestNeverArrivesEnds() async {
        let (requests, continuation) = CallRequests.makeStream()
        continuation.yield(GetBackupRequest.with { $0.id = "b" }.serializedBytes())  // and no half-close
        var start = CallStart()
        start.method = Backups.getBackup.name
        start.metadata = [MetadataEntry("authorization", "Bearer good")]
        let status = await dispatcher().handle(start, requests: requests, cancelled: AsyncStream<String>.makeStream().stream) { _ in }
        #expect(status.code == .deadlineExceeded)
        #expect(status.message.contains("request message and half-close did not arrive"), "\(status.message)")
        continuation.finish()
    }

    private func call(_ method: String, token: String? = "good", requests: [[UInt8]], timeoutMS: UInt32 = 0,
                      cancelAfter: Duration? = nil) async -> (CallStatus, [[UInt8]]) {
        let (stream, continuation) = CallRequests.makeStream()
        requests.forEach { continuation.yield($0) }
        continuation.finish()
        let (cancelled, cancel) = AsyncStream<String>.makeStream()
        if let cancelAfter {
            Task { try await Task.sleep(for: cancelAfter); cancel.yield("the client cancelled the call") }
        }
        let responses = Responses()
        var start = CallStart()
        start.method = method
        start.timeoutMS = timeoutMS
        if let token { start.metadata = [MetadataEntry("authorization", "Bearer \(token)")] }
        let status = await dispatcher().handle(start, requests: stream, cancelled: cancelled) { await responses.add($0) }
        return (status, await responses.all)
    }

    private actor Responses {
        var all: [[UInt8]] = []
        func add(_ bytes: [UInt8]) { all.append(bytes) }
    }

    private let get = GetBackupRequest.with { $0.id = "b1" }.serializedBytes()

    @Test func unaryCallAnswersOnceWithOK() async throws {
        let (status, responses) = await call(Backups.getBackup.name, requests: [get])
        #expect(status.code == .ok)
        #expect(try responses.map { try Backup(serializedBytes: $0) } == [.with { $0.id = "b1"; $0.comment = "tester" }])
    }

    @Test func clientStreamingReadsEveryMessageUntilHalfClose() async throws {
        let chunks = (0..<5).map { index in
            UploadChunk.with { $0.offset = UInt64(index * 3); $0.data = [1, 2, 3] }.serializedBytes()
        }
        let (status, responses) = await call(Backups.uploadChunks.name, requests: chunks)
        #expect(status.code == .ok)
        #expect(try responses.map { try Upload(serializedBytes: $0).bytesReceived } == [15])
        let (outOfOrder, _) = await call(Backups.uploadChunks.name, requests: [chunks[1]])
        #expect(outOfOrder.code == .invalidArgument && outOfOrder.message.contains("expected 0"))
    }

    @Test func unknownMethodIsUnimplemented() async {
        let (status, _) = await call("backup.v1.Backups/Nope", requests: [get])
        #expect(status.code == .unimplemented)
        #expect(status.message.contains("backup.v1.Backups/Nope"))
    }

    @Test func missingOrUnknownTokenIsUnauthenticated() async {
        #expect(await call(Backups.getBackup.name, token: nil, requests: [get]).0.code == .unauthenticated)
        #expect(await call(Backups.getBackup.name, token: "bad", requests: [get]).0.code == .unauthenticated)
    }

    @Test func insufficientRoleIsPermissionDenied() async {
        let (status, _) = await call(Backups.deleteBackup.name, requests: [DeleteBackupRequest().serializedBytes()])
        #expect(status.code == .permissionDenied)
        #expect(status.message.contains("needs admin"))
    }

    @Test func unaryNeedsExactlyOneRequestMessage() async {
        #expect(await call(Backups.getBackup.name, requests: []).0.code == .invalidArgument)
        #expect(await call(Backups.getBackup.name, requests: [get, get]).0.code == .invalidArgument)
        #expect(await call(Backups.getBackup.name, requests: [[0xff, 0xff]]).0.code == .invalidArgument)
    }

    @Test func domainErrorsKeepTheirCodeAndMessage() async {
        let (status, _) = await call(Backups.getBackup.name, requests: [GetBackupRequest.with { $0.id = "missing" }.serializedBytes()])
        #expect(status.code == .notFound && status.message == "backup missing does not exist")
    }

    @Test func deadlineEndsASlowCall() async {
        let (status, _) = await call(Backups.getBackup.name, requests: [GetBackupRequest.with { $0.id = "slow" }.serializedBytes()],
                                     timeoutMS: 100)
        #expect(status.code == .deadlineExceeded)
    }

    @Test func cancelEndsASlowCall() async {
        let (status, _) = await call(Backups.getBackup.name, requests: [GetBackupRequest.with { $0.id = "slow" }.serializedBytes()],
                                     cancelAfter: .milliseconds(50))
        #expect(status.code == .cancelled)
    }
}

@Suite struct AuthorizationTests {
    private func context(_ role: Role, _ namespace: String = "acme") -> CallContext {
        CallContext(caller: Caller(tokenID: "t", tokenName: "ci", namespace: namespace, role: role),
                    method: Backups.createBackup.name)
    }

    @Test func rolesIncludeTheOnesBelow() throws {
        try context(.admin).authorize(.operator, in: "acme")
        try context(.operator).authorize(.operator, in: "acme")
        try context(.operator).authorize(.viewer, in: "acme")
        #expect(throws: BackupError.permissionDenied("token \"ci\" has role viewer in acme; CreateBackup needs operator")) {
            try context(.viewer).authorize(.operator, in: "acme")
        }
    }

    @Test func aTokenCountsOnlyInItsNamespace() {
        #expect(throws: BackupError.self) { try context(.admin, "other").authorize(.viewer, in: "acme") }
    }

    /// Shown as libpq reads them, every setting quoted, credentials replaced.
    @Test func passwordsNeverLeaveTheServer() {
        let keyValue = Environment.with { $0.databaseURL = "host=db user=app password=s3cret dbname=shop" }
        #expect(redacted(keyValue).databaseURL == "user='app' password='REDACTED' dbname='shop' host='db'")
        let quoted = Environment.with { $0.databaseURL = "host=db password='a b\\'c' dbname=shop" }
        #expect(redacted(quoted).databaseURL == "password='REDACTED' dbname='shop' host='db'")
        let uri = Environment.with { $0.databaseURL = "postgresql://app:s3cret@db:5432/shop" }
        #expect(redacted(uri).databaseURL == "user='app' password='REDACTED' dbname='shop' host='db' port='5432'")
        let none = Environment.with { $0.databaseURL = "postgresql://app@db/shop" }
        #expect(redacted(none).databaseURL == "user='app' dbname='shop' host='db'")
        let unparsable = Environment.with { $0.databaseURL = "host=db password" }
        #expect(redacted(unparsable).databaseURL == "(a connection string libpq cannot parse)")
    }
}
