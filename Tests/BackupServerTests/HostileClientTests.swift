import BackupClient
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// Attacks on the connection layer by clients without a token, each found
/// by attacking a running backupd (docs/security.md).
@Suite(.serialized) struct HostileClientTests {
    /// A tokenless ServerInfo call, whole: start, an empty request, half-close.
    private func tokenlessCall(_ id: UInt32) -> [Frame] {
        [Frame(callID: id, .start(.with { $0.method = Backups.serverInfo.name })),
         Frame(callID: id, .message([])), Frame(callID: id, .halfClose)]
    }

    /// A client makes one call with its token (so the connection stays),
    /// then sends call after call and never reads an answer: once the
    /// statuses it has not taken reach the open-call limit, backupd starts no
    /// more of its calls and stops reading it, instead of piling up answers
    /// (and refusals) in memory.
    @Test func aClientThatNeverReadsItsAnswersStopsBeingRead() async throws {
        try await withTestServer { server in
            let pid = server.processIdentifier
            _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            let (before, readBefore) = (try resetPeak(pid), try bytesRead(pid))
            let authenticated = [serverInfoStart(server), Frame(callID: 1, .message([])), Frame(callID: 1, .halfClose)]
            let calls = encode(authenticated + (2...120_000).flatMap { tokenlessCall(UInt32($0)) })
            let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await server.settings().connect { channel in
                try channel.syncOptions?.setOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4096)
            }
            let sender = Task {
                try await channel.executeThenClose { _, outbound in
                    try await outbound.write(calls)
                    try await Task.sleep(for: .seconds(600))
                }
            }
            defer { sender.cancel() }
            let read = try await quietReading { try bytesRead(pid) } - readBefore
            let peak = try residentKiB(pid, "VmHWM")
            #expect(read < calls.readableBytes / 2, "backupd read \(read) of \(calls.readableBytes) bytes of calls whose answers nobody read")
            #expect(peak - before < 16 * 1024, "backupd grew from \(before) KiB to \(peak) KiB")
            let info = try await within(.seconds(20)) {
                try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            }
            #expect(info.maxOpenCalls == 128)
            // The client goes with answers unwritten: its calls end CANCELLED, and none is logged as an internal error.
            sender.cancel()
            let port = Int(server.address.split(separator: ":")[1])!
            try await eventually(within: .seconds(30)) { try acceptedConnections(pid, port: port) == 0 }  // its connection is closed
            #expect(!server.log.contains("internal error"), "\(server.log.suffix(2000))")
            print("a client that never reads: backupd read \(read >> 10) of \(calls.readableBytes >> 10) KiB, grew \((peak - before) >> 10) MiB")
        }
    }

    /// Clients without a token fill every connection slot and keep their
    /// connections busy with calls that fail authentication: a client with a
    /// token still gets in (taking the place of the oldest of them), and
    /// they are all closed at the authentication timeout however busy.
    @Test func connectionsWithoutAnAuthenticatedCallGiveWayAndEnd() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.maximumConnections = 20; $0.connections.authenticationTimeout = .seconds(15) }) { server in
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.authenticationTimeoutMS == 15_000)
            let ended = Atomic(0)
            let squatters = try await (1...20).asyncMap { _ in
                let channel = try await openTLS(server)
                return Task {
                    try? await channel.executeThenClose { inbound, outbound in
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            group.addTask { for try await _ in inbound {} }
                            group.addTask {
                                for id in UInt32(1)... {
                                    try await outbound.write(encode(tokenlessCall(id)))
                                    try await Task.sleep(for: .milliseconds(100))
                                }
                            }
                            try await group.next()
                            group.cancelAll()
                        }
                    }
                    ended.update { $0 += 1 }
                }
            }
            defer { squatters.forEach { $0.cancel() } }
            try await eventually(within: .seconds(30)) { server.admittedConnections == 20 }
            #expect(ended.value == 0)
            let served = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(served.callerTokenName == "test-admin")
            try await eventually(within: .seconds(40)) { ended.value == 20 }
        }
    }

    /// Clients that send only the length of a largest frame, and nothing
    /// more, borrow nothing from the shared receive pool: another client's
    /// large frame goes through at once, not after their partial-frame timeout.
    @Test func aFrameLengthAloneBorrowsNothing() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.partialFrameTimeout = .seconds(120); $0.connections.authenticationTimeout = .seconds(120) }) { server in
            var length = ByteBuffer()
            length.writeInteger(UInt32(defaultMaxFrameBytes))
            let header = length
            let holders = try await (1...16).asyncMap { _ in
                let channel = try await openTLS(server)
                return Task { try await channel.executeThenClose { _, outbound in
                    try await outbound.write(header)
                    try await Task.sleep(for: .seconds(600))
                } }
            }
            defer { holders.forEach { $0.cancel() } }
            try await eventually { server.admittedConnections >= 16 }
            let call = encode([
                Frame(callID: 1, .start(.with {
                    $0.method = Backups.getBackup.name
                    $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
                })),
                Frame(callID: 1, .message([UInt8](repeating: 9, count: 1 << 20))),
                Frame(callID: 1, .halfClose),
            ])
            let status = try await within(.seconds(20)) {
                try await rawCall(server, send: call) { frame, _ in
                    if case .status(let status) = frame.kind { status } else { nil }
                }
            }
            #expect(status?.code == .invalidArgument, "\(String(describing: status))")
        }
    }
}
