import BackupCatalog
import BackupPostgres
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// What clients that send faster than backupd takes cost its memory,
/// measured as backupd's peak resident size (`VmHWM`, reset before the
/// measure through `/proc/PID/clear_refs`).
@Suite(.serialized) struct BackPressureTests {
    static let limit = 64 * 1024  // KiB

    /// Fifty connections each send all of a largest-size frame but its last
    /// byte and wait: what they hold together stays within the shared pool.
    @Test func fiftyConnectionsEachHoldingAFrameOneByteShortStayWithinTheLimit() async throws {
        // The per-address share opened up to the whole pool, so that the pool's own size is what holds;
        // no connection is closed for not authenticating while the fifty are opened on a loaded machine.
        try await withTestServer(arguments: ["--shared-receive-bytes-per-peer", "\(16 << 20)", "--authentication-timeout-seconds", "300"]) { server in
            _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            let before = try resetPeak(server.processIdentifier)
            let frameBytes = defaultMaxFrameBytes
            var almostAFrame = ByteBuffer()
            almostAFrame.writeInteger(UInt32(frameBytes))
            almostAFrame.writeRepeatingByte(1, count: frameBytes - 1)
            let frame = almostAFrame
            let readBefore = try bytesRead(server.processIdentifier)
            let senders = try await (1...50).asyncMap { _ in
                let channel = try await openTLS(server)
                return Task {
                    try await channel.executeThenClose { _, outbound in
                        try await outbound.write(frame)
                        try await Task.sleep(for: .seconds(600))
                    }
                }
            }
            defer { senders.forEach { $0.cancel() } }
            _ = try await quietReading { try bytesRead(server.processIdentifier) }  // backupd has taken all it will
            // Others are served meanwhile.
            let info = try await within(.seconds(20)) {
                try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            }
            #expect(info.maxFrameBytes == UInt32(frameBytes))
            let peak = try residentKiB(server.processIdentifier, "VmHWM")
            #expect(peak - before < Self.limit, "50 frames of 4 MiB less a byte: backupd grew from \(before) KiB to \(peak) KiB")
            let read = try bytesRead(server.processIdentifier) - readBefore
            #expect(read < 48 << 20, "backupd read \(read >> 20) MiB of the clients' 200 MiB: nothing held them back")
            print("back-pressure: 50 connections × (4 MiB − 1 byte): VmRSS \(before) KiB, peak \(peak) KiB (+\((peak - before) / 1024) MiB), read \(read >> 20) MiB")
        }
    }

    /// A call streams 512 MiB of 4 MiB messages while its authentication
    /// waits on a locked catalog table (without a valid token, as an
    /// attacker would): the connection stops reading until the call takes
    /// them; once the call ends the rest is read and dropped, until the
    /// connection, which never authenticated a call, is closed.
    @Test func aCallStreaming512MiBIntoAStalledCallHoldsOneFrame() async throws {
        // The authentication timeout is not what this test is about: on a loaded machine, waiting for the reads to stop
        // took longer than its 10 seconds, and the connection was closed before the status.
        try await withTestServer(arguments: ["--authentication-timeout-seconds", "120"]) { server in
            _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            let holder = try PostgresConnection(TestPostgres.connectionString(server.catalogDatabase))
            try holder.query("BEGIN")
            try holder.query("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
            let before = try resetPeak(server.processIdentifier)
            let readBefore = try bytesRead(server.processIdentifier)

            let start = Frame(callID: 1, .start(.with {
                $0.method = Backups.getBackup.name
                $0.metadata = [MetadataEntry("authorization", "Bearer bkd_not-a-real-token")]
            }))
            let message = encode([Frame(callID: 1, .message([UInt8](repeating: 9, count: defaultMaxFrameBytes - 16)))])
            let messages = 512 * 1024 * 1024 / message.readableBytes + 1
            let channel = try await openTLS(server)
            let call = Task {
                try await channel.executeThenClose { inbound, outbound in
                    try await withThrowingTaskGroup(of: CallStatus?.self) { group in
                        group.addTask {
                            // The server may close the connection before all is sent: it never authenticated a call.
                            try? await outbound.write(encode([start]))
                            for _ in 1...messages { guard (try? await outbound.write(message)) != nil else { return nil } }
                            try? await outbound.write(encode([Frame(callID: 1, .halfClose)]))
                            return nil
                        }
                        group.addTask {
                            var received = ByteBuffer()
                            var decoder = FrameDecoder()
                            for try await chunk in inbound {
                                received.writeImmutableBuffer(chunk)
                                while let frame = try decoder.decode(buffer: &received) {
                                    if case .status(let status) = frame.kind { return status }
                                }
                            }
                            return CallStatus(RPCError(.unknown, "closed without a status"))
                        }
                        while let next = try await group.next() {
                            if let status = next {
                                group.cancelAll()
                                return status
                            }
                        }
                        return CallStatus(RPCError(.unknown, "no status"))
                    }
                }
            }
            // Until the call's authentication gets through, the client is held back.
            let read = try await quietReading { try bytesRead(server.processIdentifier) } - readBefore
            #expect(read < 16 << 20, "backupd read \(read >> 20) MiB into a call that took none")
            try holder.query("COMMIT")
            let status = try await within(.seconds(120)) { try await call.value }
            #expect(status.code == .unauthenticated, "\(status)")
            let peak = try residentKiB(server.processIdentifier, "VmHWM")
            #expect(peak - before < Self.limit, "512 MiB into a stalled call: backupd grew from \(before) KiB to \(peak) KiB")
            print("back-pressure: 512 MiB into a stalled call: held back after \(read >> 20) MiB read; VmRSS \(before) KiB, peak \(peak) KiB (+\((peak - before) / 1024) MiB)")
        }
    }
}

/// A process's reading once it has stopped changing: the same five times
/// in a row, 100 ms apart (at most a minute).
func quietReading(_ sample: () throws -> Int) async throws -> Int {
    var last = try sample(), same = 0
    for _ in 0..<600 where same < 5 {
        try await Task.sleep(for: .milliseconds(100))
        let now = try sample()
        same = now == last ? same + 1 : 0
        last = now
    }
    return last
}

/// Bytes a process has read, from files and sockets alike.
func bytesRead(_ pid: Int32) throws -> Int {
    let io = try String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8)
    let line = try #require(io.split(separator: "\n").first { $0.hasPrefix("rchar:") })
    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
}

/// Resets the peak resident size of a process to its current size, and returns it (KiB).
func resetPeak(_ pid: Int32) throws -> Int {
    try "5".write(toFile: "/proc/\(pid)/clear_refs", atomically: false, encoding: .utf8)
    return try residentKiB(pid, "VmRSS")
}

extension Sequence {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
