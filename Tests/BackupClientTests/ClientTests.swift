import BackupClient
import BackupTestSupport
import BackupWire
import Foundation
import Testing

@Suite struct ClientTests {
    /// A server that sends a call's responses faster than the caller takes
    /// them cannot grow the client's memory: past the unread limit the call
    /// fails RESOURCE_EXHAUSTED and the client cancels it.
    @Test func aCallWhoseResponsesPileUpUnreadIsCancelled() async throws {
        let (inbound, server) = AsyncThrowingStream<Frame, any Error>.makeStream()
        let sent = Atomic<[Frame]>([])
        let response = Job.with { $0.error = String(repeating: "x", count: 256 << 10) }.serializedBytes()
        var failure: RPCError?
        do {
            try await BackupClient.withTransport(token: "t", inbound: inbound, maximumUnreadBytes: 1 << 20, write: { frames in
                sent.update { $0 += frames }
                guard let start = frames.first, case .start = start.kind else { return }
                for _ in 1...10 { server.yield(Frame(callID: start.callID, .message(response))) }
            }) { client in
                try await client.serverStreaming(Backups.watchJob, .with { $0.id = "x" }) { _ in
                    // The caller holds its first response until the client has given up on the call: the rest pile up unread.
                    while !sent.value.contains(where: { $0.kind == .cancel }) { try await Task.sleep(for: .milliseconds(5)) }
                }
            }
        } catch let error as RPCError {
            failure = error
        }
        #expect(failure?.code == .resourceExhausted, "\(String(describing: failure))")
        #expect(sent.value.contains { $0.kind == .cancel })
    }

    /// A call whose task is cancelled ends at once with CANCELLED, though the
    /// server never answers, tells the server (a Cancel frame for that call),
    /// and leaves the connection to the calls that go on.
    @Test func aCancelledCallEndsCancelledAndSendsCancel() async throws {
        let (inbound, server) = AsyncThrowingStream<Frame, any Error>.makeStream()
        let sent = Atomic<[Frame]>([])
        try await BackupClient.withTransport(token: "t", inbound: inbound, write: { frames in
            sent.update { $0 += frames }
            // The server answers ServerInfo at once, and nothing else.
            guard let start = frames.first, case .start(let call) = start.kind, call.method == Backups.serverInfo.name else { return }
            server.yield(Frame(callID: start.callID, .message(ServerInfoResponse.with { $0.version = "v" }.serializedBytes())))
            server.yield(Frame(callID: start.callID, .status(CallStatus())))
        }) { client in
            let waiting = Task { try await client.unary(Backups.getJob, .with { $0.id = "x" }) }
            while !sent.value.contains(where: { if case .start = $0.kind { true } else { false } }) { await Task.yield() }
            waiting.cancel()
            await #expect { try await waiting.value } throws: { ($0 as? RPCError)?.code == .cancelled }
            let callID = try #require(sent.value.first?.callID)
            #expect(sent.value.contains { $0.callID == callID && $0.kind == .cancel })
            #expect(try await client.unary(Backups.serverInfo, ServerInfoRequest()).version == "v")
        }
    }

    @Test func addressesMustBeHostAndPort() throws {
        let settings = try ClientSettings(address: "[::1]:7443", token: "t")
        #expect(settings.host == "::1" && settings.port == 7443)
        #expect(throws: RPCError.self) { try ClientSettings(address: "localhost", token: "t") }
    }

    @Test func nothingListeningIsUnavailable() async throws {
        let settings = try ClientSettings(address: "127.0.0.1:1", token: "t", caFile: TestServer.caFile)
        do {
            _ = try await BackupClient.withConnection(settings) { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            Issue.record("connected to a closed port")
        } catch let error as RPCError {
            #expect(error.code == .unavailable && error.message.contains("127.0.0.1:1"))
        }
    }

    @Test func aServerWhoseCertificateIsNotTrustedIsRefused() async throws {
        try await withInProcessServer(live: true) { server in
            // The system's roots do not include the development CA.
            let settings = try ClientSettings(address: server.address, token: server.adminToken, caFile: nil)
            await #expect(throws: (any Error).self) {
                _ = try await BackupClient.withConnection(settings) { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            }
        }
    }
}

@Suite struct MutualTLSTests {
    static let certificates = "\(projectRoot)/certs/dev"

    @Test func aServerThatRequiresClientCertificatesRefusesClientsWithoutOne() async throws {
        try await withInProcessServer(live: true, clientCA: "\(Self.certificates)/ca.crt") { server in
            await #expect(throws: (any Error).self) {
                _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            }
            var settings = try server.settings()
            settings.clientCertificate = ("\(Self.certificates)/client.crt", "\(Self.certificates)/client.key")
            let info = try await BackupClient.withConnection(settings) { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.callerTokenName == "test-admin")

            let withCertificate = try await server.backupctl(["info", "--cert", "\(Self.certificates)/client.crt", "--key", "\(Self.certificates)/client.key"])
            #expect(withCertificate.status == 0, "\(withCertificate.standardError)")
            let without = try await server.backupctl(["info"])
            #expect(without.status != 0 && without.standardError.contains("requires a client certificate"))
        }
    }
}
