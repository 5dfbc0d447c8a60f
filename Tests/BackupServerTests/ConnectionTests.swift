import BackupCatalog
import BackupClient
import BackupPostgres
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore
import Testing

/// What a misbehaving client meets on a real TLS connection.
@Suite(.serialized) struct ConnectionTests {
    @Test func anOversizedFrameGetsResourceExhaustedAndTheConnectionCloses() async throws {
        try await withInProcessServer(live: true, configure: { $0.maxFrameBytes = 65536 }) { server in
            var bytes = ByteBuffer()
            bytes.writeInteger(UInt32(65537))
            bytes.writeBytes([UInt8](repeating: 0, count: 1024))
            let status = connectionStatus(try await exchange(server, bytes))
            #expect(status?.code == .resourceExhausted)
            #expect(status?.message.contains("65537") == true)
            // The server is unharmed.
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.maxFrameBytes == 65536)
        }
    }

    @Test func garbageGetsInvalidArgumentAndTheConnectionCloses() async throws {
        try await withInProcessServer(live: true) { server in
            var bytes = ByteBuffer()
            bytes.writeInteger(UInt32(6))
            bytes.writeBytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            let garbage = try await exchange(server, bytes)
            #expect(connectionStatus(garbage)?.code == .invalidArgument)

            // A frame that decodes but that no client may send (a status) is refused too.
            let refused = try await exchange(server, encode([Frame(callID: 4, .status(CallStatus()))]))
            #expect(connectionStatus(refused)?.code == .invalidArgument)
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.protocol == "backup-rpc/1")
        }
    }

    @Test func aConnectionMayHoldABoundedNumberOfOpenCalls() async throws {
        try await withInProcessServer(live: true) { server in
            // 129 calls that never half-close: the last one is refused, the others stay open.
            let starts = (UInt32(1)...129).map { id in
                Frame(callID: id, .start(.with {
                    $0.method = Backups.serverInfo.name
                    $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
                }))
            }
            let refused = try await rawCall(server, send: encode(starts)) { frame, _ in frame }
            #expect(refused?.callID == 129)
            #expect(refused?.kind == .status(CallStatus(RPCError(.resourceExhausted, "a connection may have 128 calls open at once"))))
        }
    }

    /// Every catalog connection is lent to calls stuck behind a lock; a call
    /// whose deadline passes while it waits for one ends DEADLINE_EXCEEDED.
    @Test func aCallPastItsDeadlineEndsWhileEveryCatalogConnectionIsLent() async throws {
        try await withInProcessServer(live: true) { server in
            let holder = try PostgresConnection(TestPostgres.connectionString(server.catalogDatabase))
            try holder.query("BEGIN")
            try holder.query("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
            let stuck = (1...12).map { _ in
                Task { try? await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) } }
            }
            // The catalog's eight connections lent to stuck calls, the other four waiting for one.
            try await eventually(within: .seconds(30)) { server.catalogLeasesQueued >= 4 }
            let late = try await within(.seconds(15)) {
                await expectStatus(.deadlineExceeded) {
                    _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest(), timeout: .seconds(1)) }
                }
            }
            #expect(late?.code == .deadlineExceeded)
            try holder.query("ROLLBACK")
            for call in stuck { #expect(await call.value != nil) }
        }
    }

    /// The catalog ends every session of backupd (a restart would too),
    /// while a backup runs and a WatchJob stream follows it: the calls that
    /// follow all succeed, each pooled connection found dead replaced before
    /// anything ran on it; the backup takes its blob lock again and
    /// finishes, and the stream sees it finish.
    @Test func callsCarryOnAfterTheCatalogEndsEverySession() async throws {
        try await withTestApp { app in
            // pg_dump says it has started, then waits while its gate exists: the backup is running throughout.
            let dump = try GatedTool("pg_dump")
            try await withInProcessServer(live: true, configure: { $0.jobs.tools.pgDump = dump.path }) { server in
                try await server.register(app)
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                }
                try await eventually(within: .seconds(60)) { dump.hasStarted }
                let watch = Task {
                    try await server.withClient { client in
                        var last = JobStatus.unspecified
                        try await client.serverStreaming(Backups.watchJob, .with { $0.id = created.job.id }) { last = $0.status }
                        return last
                    }
                }
                // Fill the pool with idle connections.
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 1...8 { group.addTask { _ = try await server.withClient { try await $0.unary(Backups.listBackups, .with { $0.namespace = "acme" }) } } }
                    try await group.waitForAll()
                }
                let ended = try await TestPostgres.query("postgres", """
                    SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
                    """, server.catalogDatabase)[0].int64("n")
                #expect(ended > 2)
                var failures: [String] = []
                for _ in 1...20 {
                    do {
                        _ = try await server.withClient { try await $0.unary(Backups.listBackups, .with { $0.namespace = "acme" }) }
                    } catch {
                        failures.append("\(error)")
                    }
                }
                #expect(failures.isEmpty, "\(failures)")
                // The running backup and the stream watching it carry on to the end.
                dump.release()
                let job = try await server.withClient { try await waitForJob(created.job.id, on: $0) }
                #expect(job.status == .finished, "\(job.error)")
                #expect(try await within(.seconds(30)) { try await watch.value } == .finished)
            }
        }
    }

    @Test func anIdleServerStopsCleanlyOnSigterm() async throws {
        let server = try await TestServer.start()
        let status = await server.stop(signal: SIGTERM)
        #expect(status == 0, "\(server.log)")
        #expect(!server.log.contains("finished unexpectedly"))
        await server.remove()
    }

    /// call_id 0 carries the connection's own status, so no call may use
    /// it; a call id used twice ends the connection; either way every call
    /// hears exactly one status.
    @Test func callIDZeroAndDuplicateCallIDsEndTheConnectionWithOneStatusPerCall() async throws {
        try await withInProcessServer(live: true) { server in
            let (zeroBytes, duplicateBytes) = (encode([serverInfoStart(server, callID: 0)]),
                                               encode([serverInfoStart(server), serverInfoStart(server)]))
            let zero = try await within(.seconds(20)) { try await exchange(server, zeroBytes) }
            #expect(zero.count == 1, "\(zero)")
            #expect(connectionStatus(zero) == CallStatus(RPCError(.invalidArgument, "call_id 0 is reserved for the connection's own status")))

            let duplicate = try await within(.seconds(20)) { try await exchange(server, duplicateBytes) }
            let statuses = duplicate.filter { if case .status = $0.kind { true } else { false } }
            #expect(statuses.filter { $0.callID == 1 }.count == 1, "\(duplicate)")
            // The open call's status says what happened: not that the client cancelled it (issue 19).
            if case .status(let first) = statuses.first(where: { $0.callID == 1 })?.kind, first.code == .cancelled {
                #expect(first.message.contains("broke the protocol") && first.message.contains("call_id 1 is already open"), "\(first)")
            }
            #expect(connectionStatus(duplicate) == CallStatus(RPCError(.invalidArgument, "call_id 1 is already open on this connection")))
        }
    }

    @Test func anUnknownMethodIsUnimplementedOnTheWire() async throws {
        try await withInProcessServer(live: true) { server in
            let call = encode([Frame(callID: 9, .start(.with { $0.method = "backup.v1.Backups/Explode" })),
                               Frame(callID: 9, .message([])), Frame(callID: 9, .halfClose)])
            let status = try await rawCall(server, send: call) { frame, _ -> CallStatus? in
                guard case .status(let status) = frame.kind else { return nil }
                #expect(frame.callID == 9)
                return status
            }
            #expect(status?.code == .unimplemented)
        }
    }

    @Test func aCancelFrameEndsAStreamingCall() async throws {
        let dump = try GatedTool("pg_dump")
        try await withTestApp { app in
            try await withInProcessServer(live: true, configure: { $0.jobs.tools.pgDump = dump.path }) { server in
                defer { dump.release() }  // the job ends before the server's shutdown waits for it
                try await server.register(app)
                let created = try await server.withClient { try await createBackup($0) }
                let opening = encode([
                    Frame(callID: 3, .start(.with {
                        $0.method = Backups.watchJob.name
                        $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
                    })),
                    Frame(callID: 3, .message(WatchJobRequest.with { $0.id = created.job.id }.serializedBytes())),
                    Frame(callID: 3, .halfClose),
                ])
                var updates = 0
                let status = try await rawCall(server, send: opening) { frame, outbound -> CallStatus? in
                    switch frame.kind {
                    case .message:
                        updates += 1
                        if updates == 1 { try await outbound.write(encode([Frame(callID: 3, .cancel)])) }
                        return nil
                    case .status(let status):
                        return status
                    default:
                        return nil
                    }
                }
                #expect(updates >= 1)
                #expect(status?.code == .cancelled)
            }
        }
    }

    /// A client that connects and never finishes its TLS handshake is let go
    /// after ten seconds, silent or with half a ClientHello sent.
    @Test func aHandshakeThatNeverEndsIsClosedAfterTenSeconds() async throws {
        try await withInProcessServer(live: true) { server in
            let (host, port) = (String(server.address.split(separator: ":")[0]), Int(server.address.split(separator: ":")[1])!)
            let silent = try openConnection(host: host, port: port)
            let halfHello = try openConnection(host: host, port: port)
            defer { close(silent); close(halfHello) }
            _ = [UInt8]([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).withUnsafeBytes { write(halfHello, $0.baseAddress, $0.count) }
            let opened = ContinuousClock.now
            for fd in [silent, halfHello] {
                var byte: UInt8 = 0
                var timeout = timeval(tv_sec: 20, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                let count = read(fd, &byte, 1)
                let closed = count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                #expect(closed, "still open after 20 seconds, or answered a handshake that never came")
            }
            let waited = ContinuousClock.now - opened
            #expect(waited >= .seconds(9), "closed after \(waited), before the handshake's time was up")
        }
    }

    @Test func aJobOfAKilledServerIsFailedWhenItsLeaseRunsOut() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            defer { gate.release() }
            let first = try await TestServer.start(arguments: ["--pg-dump", gate.path, "--job-lease-seconds", "2"])
            try await first.register(app)
            let created = try await first.withClient { try await createBackup($0) }
            try await eventually {
                try TestPostgres.query(first.catalogDatabase, "SELECT status FROM jobs WHERE id = $1", created.job.id)
                    .first?.string("status") == "running"
            }
            await first.stop(signal: SIGKILL)
            // pg_dump's wrapper was orphaned by the kill; it is harmless and ends with the gate.

            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                    storage: first.storage, adminToken: first.adminToken)
            do {
                let (job, backup) = try await second.withClient { client in
                    (try await waitForJob(created.job.id, on: client, timeout: .seconds(30)),
                     try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id }))
                }
                #expect(job.status == .failed && job.error.contains("lease expired"))
                #expect(backup.status == .failed)
                // The environment is free again.
                let next = try await second.withClient { try await createBackup($0) }
                let nextJob = try await second.withClient { try await waitForJob(next.job.id, on: $0) }
                #expect(nextJob.status == .finished)
            } catch {
                print(second.log)
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }
}

@Suite(.serialized) struct ConnectionLimitTests {
    /// A TLS connection that never sends a frame is closed once idle; one
    /// with a call open is not; other clients are served throughout.
    @Test func aConnectionWithNoCallIsClosedOnceIdleAndOneWithACallIsNot() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.idleTimeout = .seconds(3); $0.connections.partialFrameTimeout = .seconds(600) }) { server in
            // ServerInfo reports the limits in force.
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.maxOpenCalls == 128 && info.handshakeTimeoutMS == 10_000)
            #expect(info.partialFrameTimeoutMS == 600_000 && info.idleConnectionTimeoutMS == 3_000)
            #expect(try await server.backupctl(["info"]).standardOutput.contains("128 calls open at once; handshake 10 s, a frame 600 s, idle 3 s"))
            // The busy connection opens first: were it taken for idle, it would be closed before the silent one.
            let busy = try await openTLS(server)
            let busyEnded = Atomic(false)
            let busyClosed = Task {
                try? await waitUntilClosed(busy, sending: encode([serverInfoStart(server)]))
                busyEnded.value = true
            }
            let silent = try await openTLS(server)
            let silentEnded = Atomic(false)
            let silentClosed = Task { try await waitUntilClosed(silent, sending: nil); silentEnded.value = true }
            try await within(.seconds(20)) {
                // Other clients are served while the silent one waits out its idle time.
                while !silentEnded.value {
                    _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
                    try await Task.sleep(for: .milliseconds(50))
                }
                try await silentClosed.value
            }
            _ = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(!busyEnded.value, "a connection with a call open was closed as idle")
            busyClosed.cancel()
        }
    }

    /// A client that sends half a frame and falls silent is let go after the
    /// partial-frame timeout, long before the idle timeout would end it.
    @Test func aHalfSentFrameEndsItsConnection() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.partialFrameTimeout = .seconds(1) }) { server in
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt32(100))
            buffer.writeBytes([1, 2, 3])
            let half = buffer
            let (halfSent, silent) = (try await openTLS(server), try await openTLS(server))
            let silentEnded = Atomic(false)
            let silentClosed = Task {
                try? await waitUntilClosed(silent, sending: nil)
                silentEnded.value = true
            }
            try await within(.seconds(20)) { try await waitUntilClosed(halfSent, sending: half) }
            #expect(!silentEnded.value, "an idle connection was closed long before its idle timeout")
            silentClosed.cancel()
        }
    }

    /// A call whose request comes without its half-close ends
    /// DEADLINE_EXCEEDED once the partial-frame timeout has passed.
    @Test func aCallThatNeverHalfClosesEnds() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.partialFrameTimeout = .seconds(1) }) { server in
            let opening = encode([serverInfoStart(server), Frame(callID: 1, .message([]))])
            let status = try await within(.seconds(20)) {
                try await rawCall(server, send: opening) { frame, _ in
                    if case .status(let status) = frame.kind { status } else { nil }
                }
            }
            #expect(status?.code == .deadlineExceeded, "\(String(describing: status))")
        }
    }

    /// Past the connections allowed from one address, new ones from it are
    /// closed at once, while another address is still taken; once the first
    /// ones close, their address is served again.
    @Test func connectionsFromOneAddressAreCapped() async throws {
        try await withInProcessServer(live: true, configure: { $0.connections.maximumConnectionsPerPeer = 5 }) { server in
            let port = Int(server.address.split(separator: ":")[1])!
            let held = try (1...5).map { _ in try openConnection(host: "127.0.0.1", port: port) }
            try await eventually(within: .seconds(30)) { server.admittedConnections == 5 }
            let refused = try openConnection(host: "127.0.0.1", port: port)
            let other = try openConnection(host: "127.0.0.1", port: port, from: "127.0.0.2")
            defer { close(refused); close(other) }
            #expect(closedWithin(refused, seconds: 2), "a sixth connection from 127.0.0.1 was kept")
            #expect(!closedWithin(other, seconds: 2), "a connection from 127.0.0.2 was closed")
            held.forEach { close($0) }
            try await eventually(within: .seconds(30)) { server.admittedConnections == 1 }  // the one from 127.0.0.2
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.maxFrameBytes > 0)
        }
    }

    /// backupd under a descriptor limit of 1,024, while one address opens
    /// 1,500 connections at once: it keeps 128 of them and closes the rest
    /// as they come, without spinning; another client is served, a running
    /// backup finishes, and its descriptors return to where they were.
    @Test func fifteenHundredConnectionsUnderADescriptorLimitOf1024() async throws {
        try await withTestApp { app in
            let dump = try GatedTool("pg_dump")
            try await withTestServer(arguments: ["--pg-dump", dump.path, "--handshake-timeout-seconds", "300"], descriptorLimit: 1024) { server in
                try await server.register(app)
                let pid = server.processIdentifier
                let port = Int(server.address.split(separator: ":")[1])!
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                }
                try await eventually(within: .seconds(60)) { dump.hasStarted }
                let baseline = try descriptorCount(pid)

                var sockets: [Int32] = []
                for _ in 1...1500 { sockets.append(try openConnection(host: "127.0.0.1", port: port, from: "127.0.0.2")) }
                defer { sockets.forEach { close($0) } }
                _ = try await quietReading { try descriptorCount(pid) }  // every connection accepted, and the ones past the cap closed
                // A rate, so measured over a while: the one fixed wait of the tests, and what it watches for (a loop
                // that spins on connections it cannot take) would burn the whole of it.
                let cpuBefore = try cpuSeconds(pid)
                try await Task.sleep(for: .seconds(3))
                let cpu = try cpuSeconds(pid) - cpuBefore
                let held = try descriptorCount(pid) - baseline
                #expect(held <= 128 + 8, "backupd holds \(held) more descriptors than before the 1,500 connections")
                #expect(cpu < 1.0, "backupd used \(cpu) s of CPU in 3 s while the connections were held")
                let open = sockets.filter { !closedByPeer($0) }.count
                #expect(open == 128, "\(open) of the 1,500 connections are still open")

                let job = try await server.withClient { client in
                    _ = try await client.unary(Backups.serverInfo, ServerInfoRequest())
                    dump.release()
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(job.status == .finished, "\(job.error)")
                sockets.forEach { close($0) }
                sockets.removeAll()
                try await eventually(within: .seconds(20)) { try acceptedConnections(pid, port: port) == 0 }
                print("1,500 connections under nofile 1024: \(held) descriptors held, \(open) connections kept, \(cpu) s CPU in 3 s")
            }
        }
    }
}

/// Descriptors a process has open.
func descriptorCount(_ pid: Int32) throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
}

/// Sockets a process holds for connections accepted on `port` (its
/// listening socket not counted): what says a client's connection was
/// closed, where a count of every descriptor also moves with the catalog's
/// connection pool and the jobs' files.
func acceptedConnections(_ pid: Int32, port: Int) throws -> Int {
    try acceptedPeerPorts(pid, port: port).count
}

/// The client ports of the connections a process holds accepted on `port`.
func acceptedPeerPorts(_ pid: Int32, port: Int) throws -> [Int] {
    let inodes = Set(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").compactMap { fd -> Substring? in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"),
              target.hasPrefix("socket:[") else { return nil }
        return Substring(target.dropFirst("socket:[".count).dropLast())
    })
    // /proc/PID/net/tcp{,6}: sl, local address:port (hex), remote, state (0A listening), queues, timers, retransmits, uid, timeout, inode.
    return ["tcp", "tcp6"].flatMap { table in
        let rows = procText("/proc/\(pid)/net/\(table)").split(separator: "\n").dropFirst()
        return rows.compactMap { row -> Int? in
            let fields = row.split(separator: " ")
            guard fields.count > 9, let local = fields[1].split(separator: ":").last, let remote = fields[2].split(separator: ":").last,
                  Int(local, radix: 16) == port, fields[3] != "0A", inodes.contains(fields[9]) else { return nil }
            return Int(remote, radix: 16)
        }
    }
}

/// A /proc file read to its end. `String(contentsOfFile:)` reads only its
/// first page (4,050 of 31,200 bytes of a network table with 60
/// connections), and the table lists every connection of the machine's
/// namespace, the test cluster's included: the server's own sockets were
/// rarely on that page, so a check for "no connection left" always held.
func procText(_ path: String) -> String {
    guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
    defer { try? handle.close() }
    return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
}

/// The local port of a connected socket.
func localPort(_ fd: Int32) -> Int {
    var address = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// CPU time (user and system) a process has used, in seconds.
func cpuSeconds(_ pid: Int32) throws -> Double {
    let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and 13th.
    let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
    return Double((Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Whether the other end has closed the connection, without waiting.
func closedByPeer(_ fd: Int32) -> Bool {
    var byte: UInt8 = 0
    let count = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
    return count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
}

func closedWithin(_ fd: Int32, seconds: Int) -> Bool {
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var byte: UInt8 = 0
    let count = read(fd, &byte, 1)
    return count == 0 || (count < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
}

func openTLS(_ server: some WireTestServer) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
    try await server.settings().connect { _ in }
}

/// Writes `bytes` (if any), then reads and drops what the server sends until it closes the connection.
func waitUntilClosed(_ channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>, sending bytes: ByteBuffer?) async throws {
    try await channel.executeThenClose { inbound, outbound in
        if let bytes { try await outbound.write(bytes) }
        for try await _ in inbound {}
    }
}

/// The start frame of a ServerInfo call.
func serverInfoStart(_ server: some WireTestServer, callID: UInt32 = 1) -> Frame {
    Frame(callID: callID, .start(.with {
        $0.method = Backups.serverInfo.name
        $0.metadata = [MetadataEntry("authorization", "Bearer \(server.adminToken)")]
    }))
}

@Suite(.serialized) struct WatchTests {
    /// 640 watches of one running job (5 connections × 128) cost the catalog
    /// what one does, and the job's end reaches every one of them. The
    /// server runs on a manual clock and the catalog's leases are counted as
    /// they happen: each watch's call is authenticated once, and a move of
    /// the clock past the safety net's interval reads the job once for all
    /// of them, never once per watch.
    @Test func manyWatchesOfOneJobReadTheCatalogOnceAndAllHearItsEnd() async throws {
        try await withTestApp(empty: true) { app in
            let dump = try GatedTool("pg_dump")
            let clock = ManualClock()
            // The job's lease is renewed on the manual clock, which moves five seconds here; its expiry is
            // PostgreSQL's time, so it is made longer than any loaded machine takes (seen in CI: a lease expired
            // under load ended the job "failed" before its watches heard it finish).
            try await withInProcessServer(live: true, configure: {
                $0.jobs.tools.pgDump = dump.path; $0.clock = clock; $0.jobs.leaseSeconds = 3600
            }) { server in
                defer { dump.release() }  // before the server's shutdown, should the test fail on the way
                try await server.register(app)
                let created = try await server.withClient { try await createBackup($0) }
                let viewer = try await server.makeToken(.viewer, name: "watcher")
                let watching = Atomic(0)
                try await eventually(within: .seconds(60)) { dump.hasStarted }
                let alone = server.catalogLeases
                let watchers = Task {
                    try await withThrowingTaskGroup(of: [JobStatus].self) { connections in
                        for _ in 1...5 {
                            connections.addTask {
                                try await server.withClient(token: viewer) { client in
                                    try await withThrowingTaskGroup(of: JobStatus.self) { watches in
                                        for _ in 1...128 {
                                            watches.addTask {
                                                var last = JobStatus.unspecified
                                                try await client.serverStreaming(Backups.watchJob, .with { $0.id = created.job.id }) {
                                                    if last == .unspecified { watching.update { $0 += 1 } }
                                                    last = $0.status
                                                }
                                                return last
                                            }
                                        }
                                        return try await watches.reduce(into: []) { $0.append($1) }
                                    }
                                }
                            }
                        }
                        return try await connections.reduce(into: []) { $0 += $1 }
                    }
                }
                // Every watch open and read once, while the job is held running: each call authenticated and its
                // job's namespace checked, nothing more.
                try await eventually(within: .seconds(60)) { watching.value == 640 }
                let opened = server.catalogLeases - alone
                #expect(opened <= 2 * 640 + 20, "640 watches opened with \(opened) catalog leases")
                // Five intervals of the safety net: each reads the job once for every watch of it.
                let sleeping = clock.sleepers
                let beforeTicks = server.catalogLeases
                for _ in 1...5 {
                    clock.advance(by: .seconds(1))
                    for _ in 0..<2000 where clock.sleepers < sleeping { try await Task.sleep(for: .milliseconds(5)) }
                }
                let ticks = server.catalogLeases - beforeTicks
                // The job read once a second for all 640, beside the runner's own polls; a reading per watch would be 3,200.
                #expect(ticks <= 40, "five seconds of 640 watches took \(ticks) catalog leases")
                dump.release()
                let ends = try await within(.seconds(60)) { try await watchers.value }
                #expect(ends.count == 640 && ends.allSatisfy { $0 == .finished }, "\(Set(ends))")
                print("watches: 640 opened with \(opened) catalog leases; five safety-net intervals took \(ticks)")
            }
        }
    }
}
