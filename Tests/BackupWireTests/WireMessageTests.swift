import BackupProto
import CProtobufC
@testable import BackupWire
import NIOCore
import Testing

@Suite struct WireMessageTests {
    @Test func everyFieldKindRoundTrips() throws {
        let backup = Backup.with {
            $0.id = "7c2d"; $0.namespace = "acme"; $0.status = .finished; $0.kind = .weekly
            $0.comment = "before the release, with ünïcode"; $0.createdUnixMS = 1_764_000_000_123
            $0.sizeBytes = UInt64.max; $0.fileCount = 3
        }
        #expect(try Backup(serializedBytes: backup.serializedBytes()) == backup)

        let list = ListBackupsResponse.with { $0.backups = [backup, Backup(), backup]; $0.nextPageToken = "42" }
        #expect(try ListBackupsResponse(serializedBytes: list.serializedBytes()) == list)

        let chunk = UploadChunk.with { $0.uploadID = "u"; $0.offset = 1 << 40; $0.data = Array(0...255) }
        #expect(try UploadChunk(serializedBytes: chunk.serializedBytes()) == chunk)

        let nested = CreateTokenResponse.with { $0.token = .with { $0.role = .operator; $0.name = "ci" }; $0.secret = "s" }
        #expect(try CreateTokenResponse(serializedBytes: nested.serializedBytes()) == nested)
    }

    @Test func defaultValuesEncodeToNothing() {
        #expect(Backup().serializedBytes().isEmpty)
        #expect(ServerInfoRequest().serializedBytes().isEmpty)
    }

    @Test func encodingIsStandardProtobuf() {
        // GetBackupRequest{id: "ab"}: field 1, wire type 2, length 2.
        #expect(GetBackupRequest.with { $0.id = "ab" }.serializedBytes() == [0x0a, 0x02, 0x61, 0x62])
        // Job{kind: RESTORE(2)}: field 2, varint.
        #expect(Job.with { $0.kind = .restore }.serializedBytes() == [0x10, 0x02])
    }

    @Test func unknownEnumNumbersReadAsUnspecified() throws {
        // Job{status: 99}
        let job = try Job(serializedBytes: [0x18, 99])
        #expect(job.status == .unspecified)
    }

    @Test func garbageIsRefused() {
        #expect(throws: WireDecodingError.self) { try Backup(serializedBytes: [0x0a, 0x05, 0x61]) }
        #expect(throws: WireDecodingError.self) { try Frame(serializedBytes: [0xff, 0xff, 0xff, 0xff, 0xff]) }
    }

    /// Whatever bytes arrive, decoding either fails cleanly or yields a value
    /// that encodes again: nothing a client sends can crash the server here.
    @Test func randomBytesNeverCrashDecoding() {
        var generator = SystemRandomNumberGenerator()
        let decoders: [([UInt8]) throws -> [UInt8]] = [
            { try Frame(serializedBytes: $0).serializedBytes() },
            { try CallStart(serializedBytes: $0).serializedBytes() },
            { try RegisterEnvironmentRequest(serializedBytes: $0).serializedBytes() },
            { try ListBackupsResponse(serializedBytes: $0).serializedBytes() },
            { try CreateBackupResponse(serializedBytes: $0).serializedBytes() },
            { try UploadChunk(serializedBytes: $0).serializedBytes() },
            { try SetScheduleRequest(serializedBytes: $0).serializedBytes() },
        ]
        var decoded = 0
        for round in 0..<5000 {
            var bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if round.isMultiple(of: 2) {
                // Start from a valid message and corrupt a few bytes, to get past the first tag.
                bytes = Frame(callID: 1, .start(.with { $0.method = "m"; $0.metadata = [MetadataEntry("k", "v")] })).serializedBytes()
                for _ in 0..<3 { bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
            }
            for decode in decoders where (try? decode(bytes)) != nil { decoded += 1 }
        }
        #expect(decoded > 0)
    }

    @Test func everyFrameKindRoundTrips() throws {
        let start = CallStart.with {
            $0.method = Backups.createBackup.name; $0.timeoutMS = 1500
            $0.metadata = [MetadataEntry("authorization", "Bearer x")]
        }
        let kinds: [Frame.Kind] = [.start(start), .message([]), .message([1, 2, 3]), .halfClose,
                                   .status(CallStatus(RPCError(.notFound, "no such backup"))), .cancel]
        for kind in kinds {
            let frame = Frame(callID: 7, kind)
            #expect(try Frame(serializedBytes: frame.serializedBytes()) == frame)
        }
        #expect(start.metadata("Authorization") == "Bearer x")
    }

    /// One row of the method table: its name, the protobuf-c names of its request and response, and their mapping check.
    struct MethodRow: Sendable {
        let name: String, request: String, response: String
        let checkMappings: @Sendable () -> Void
        init<Request, Response>(_ method: Method<Request, Response>) {
            name = method.name
            request = String(cString: Request.descriptor.name)
            response = String(cString: Response.descriptor.name)
            checkMappings = { Request.checkMapping(); Response.checkMapping() }
        }
    }

    static let table = [
        MethodRow(Backups.serverInfo), MethodRow(Backups.registerEnvironment), MethodRow(Backups.listEnvironments),
        MethodRow(Backups.getEnvironment), MethodRow(Backups.updateEnvironment), MethodRow(Backups.deleteEnvironment),
        MethodRow(Backups.setEnvironmentState), MethodRow(Backups.createBackup), MethodRow(Backups.listBackups),
        MethodRow(Backups.getBackup), MethodRow(Backups.updateBackup), MethodRow(Backups.deleteBackup),
        MethodRow(Backups.verifyBackup), MethodRow(Backups.getJob), MethodRow(Backups.watchJob), MethodRow(Backups.cancelJob),
        MethodRow(Backups.restoreBackup), MethodRow(Backups.listActivity), MethodRow(Backups.requestDownload),
        MethodRow(Backups.getDownload), MethodRow(Backups.startUpload), MethodRow(Backups.uploadChunks),
        MethodRow(Backups.finishUpload), MethodRow(Backups.getUpload), MethodRow(Backups.abandonUpload),
        MethodRow(Backups.getSchedule), MethodRow(Backups.setSchedule), MethodRow(Backups.createToken),
        MethodRow(Backups.revokeToken), MethodRow(Backups.listTokens),
    ]

    /// Each method of the table is the proto service's, with the request and response types the service declares.
    @Test func methodTableMatchesTheServiceInTheProto() {
        let service = backup__v1__backups__descriptor
        let proto = (0..<Int(service.n_methods)).map { index in
            let method = service.methods[index]
            return ("backup.v1.Backups/" + String(cString: method.name),
                    String(cString: method.input.pointee.name), String(cString: method.output.pointee.name))
        }
        #expect(Self.table.count == proto.count)
        let byName = Dictionary(uniqueKeysWithValues: proto.map { ($0.0, ($0.1, $0.2)) })
        for row in Self.table {
            let declared = byName[row.name]
            #expect(declared?.0 == row.request && declared?.1 == row.response,
                    "\(row.name) is typed \(row.request) -> \(row.response), the .proto says \(String(describing: declared))")
        }
    }

    /// Every message the methods reach, and every message nested in those, maps each field with the
    /// number, type, label and message type protobuf-c's descriptors give (a mismatch traps naming it).
    @Test func everyMessageMapsItsFieldsAsTheProtoDeclaresThem() {
        for row in Self.table { row.checkMappings() }
    }

    @Test func jsonUsesProtoNamesAndEnumNames() {
        let json = Backup.with { $0.id = "x"; $0.status = .finished; $0.fileCount = 2 }.jsonObject()
        #expect(json["id"] as? String == "x")
        #expect(json["status"] as? String == "BACKUP_STATUS_FINISHED")
        #expect(json["file_count"] as? UInt64 == 2)
        #expect(json["comment"] == nil)
        let list = ListBackupsResponse.with { $0.backups = [.with { $0.id = "a" }, .with { $0.id = "b" }] }.jsonObject()
        #expect((list["backups"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["a", "b"])
    }
}

@Suite struct FrameCodecTests {
    private func encoded(_ frames: [Frame]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for frame in frames { FrameEncoder().encode(data: frame, out: &buffer) }
        return buffer
    }

    @Test func framesSplitAtAnyByteReassemble() throws {
        let frames = [Frame(callID: 1, .message(Array(repeating: 9, count: 1000))), Frame(callID: 2, .halfClose),
                      Frame(callID: 1, .cancel)]
        let all = encoded(frames)
        var decoder = FrameDecoder(maxFrameBytes: 4096)
        var buffer = ByteBuffer()
        var decoded: [Frame] = []
        for byte in all.readableBytesView {
            buffer.writeInteger(byte)
            while let frame = try decoder.decode(buffer: &buffer) { decoded.append(frame) }
        }
        #expect(decoded == frames)
        #expect(buffer.readableBytes == 0)
    }

    @Test func oversizedLengthIsRefusedBeforeTheBodyArrives() {
        var decoder = FrameDecoder(maxFrameBytes: 1024)
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1025))
        #expect(throws: FrameError.tooLarge(length: 1025, limit: 1024)) { try decoder.decode(buffer: &buffer) }
        #expect(FrameError.tooLarge(length: 1025, limit: 1024).rpcError.code == .resourceExhausted)
    }

    @Test func undecodableBodyIsAnInvalidArgument() {
        var decoder = FrameDecoder()
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(4))
        buffer.writeBytes([0xff, 0xff, 0xff, 0xff])
        #expect(throws: FrameError.undecodable(length: 4)) { try decoder.decode(buffer: &buffer) }
        #expect(FrameError.undecodable(length: 4).rpcError.code == .invalidArgument)
    }

    @Test func partialFrameWaitsForMoreBytes() throws {
        var decoder = FrameDecoder()
        var buffer = encoded([Frame(callID: 3, .halfClose)])
        let full = buffer
        buffer.moveWriterIndex(to: buffer.writerIndex - 1)
        #expect(try decoder.decode(buffer: &buffer) == nil)
        var complete = full
        #expect(try decoder.decode(buffer: &complete) == Frame(callID: 3, .halfClose))
    }
}

@Suite struct WireValidationTests {
    private func violation(_ bytes: [UInt8], as type: (some WireMessage).Type) -> String? {
        do {
            _ = try type.init(validating: bytes)
            return nil
        } catch let violation as WireViolation {
            return violation.description
        } catch {
            return "\(error)"
        }
    }

    private func string(_ field: UInt8, _ bytes: [UInt8]) -> [UInt8] {
        precondition(bytes.count < 128)
        return [field << 3 | 2, UInt8(bytes.count)] + bytes
    }

    @Test func stringsOverTheirLimitNULsAndBadUTF8AreNamed() {
        let comment = CreateBackupRequest.with { $0.namespace = "acme"; $0.comment = String(repeating: "é", count: 2049) }
        #expect(violation(comment.serializedBytes(), as: CreateBackupRequest.self) == "comment is 4098 bytes long; the limit is 4096 bytes")
        let atLimit = CreateBackupRequest.with { $0.comment = String(repeating: "x", count: 4096); $0.environment = String(repeating: "e", count: 128) }
        #expect(violation(atLimit.serializedBytes(), as: CreateBackupRequest.self) == nil)
        #expect(violation(string(3, Array("a\0b".utf8)), as: CreateBackupRequest.self) == "comment contains a NUL byte")
        #expect(violation(string(2, [0xc3]), as: CreateBackupRequest.self) == "environment is not valid UTF-8")
        let app = RegisterEnvironmentRequest.with { $0.app = String(repeating: "a", count: 257) }
        #expect(violation(app.serializedBytes(), as: RegisterEnvironmentRequest.self) == "app is 257 bytes long; the limit is 256 bytes")
    }

    @Test func nestedMessagesAndEnumsAreCheckedToo() {
        #expect(violation([3 << 3, 6], as: ListBackupsRequest.self) == "kind has value 6, which backup.v1.BackupKind does not define")
        #expect(violation([3 << 3, 5], as: ListBackupsRequest.self) == nil)
        let schedule = string(1, string(5, Array("Europe/\0x".utf8)))
        #expect(violation(schedule, as: SetScheduleRequest.self) == "schedule.time_zone contains a NUL byte")
    }

    @Test func controlCharactersAreNamedAndOnlyTextMayHoldLineBreaks() {
        #expect(violation(string(2, Array("prod\u{1b}[2J".utf8)), as: CreateBackupRequest.self) == "environment contains the control character U+001B")
        #expect(violation(string(2, Array("a\u{7}".utf8)), as: CreateBackupRequest.self) == "environment contains the control character U+0007")
        #expect(violation(string(2, Array("a\nb".utf8)), as: CreateBackupRequest.self) == "environment contains the control character U+000A")
        #expect(violation(string(3, Array("line one\r\n\tline two".utf8)), as: CreateBackupRequest.self) == nil)
    }

    @Test func aUInt32SentAsALargerVarintIsRefusedNotTruncated() {
        let pageSize: (UInt64) -> [UInt8] = { value in
            var bytes: [UInt8] = [5 << 3], rest = value
            while rest >= 0x80 { bytes.append(UInt8(rest & 0x7f) | 0x80); rest >>= 7 }
            return bytes + [UInt8(rest)]
        }
        #expect(violation(pageSize(UInt64(UInt32.max)), as: ListBackupsRequest.self) == nil)
        #expect(violation(pageSize(UInt64(UInt32.max) + 51), as: ListBackupsRequest.self) == "page_size is 4294967346, above the largest uint32")
    }

    @Test func aStartFrameWithANULInItsMetadataIsMarked() throws {
        let entry = string(1, Array("authorization".utf8)) + string(2, Array("Bearer t\0junk".utf8))
        let start = string(1, Array("backup.v1.Backups/ServerInfo".utf8)) + string(2, entry)
        let body: [UInt8] = [1 << 3, 1] + [2 << 3 | 2, UInt8(start.count)] + start
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(body.count))
        buffer.writeBytes(body)
        var decoder = FrameDecoder()
        let frame = try #require(try decoder.decode(buffer: &buffer))
        guard case .start(let decoded) = frame.kind else { Issue.record("not a start frame"); return }
        #expect(decoded.problem == "start.metadata.value contains a NUL byte")
        let clean = Frame(callID: 1, .start(.with { $0.method = "m"; $0.metadata = [MetadataEntry("authorization", "Bearer t")] }))
        var cleanBuffer = ByteBuffer()
        FrameEncoder().encode(data: clean, out: &cleanBuffer)
        #expect(try decoder.decode(buffer: &cleanBuffer) == clean)
    }
}

@Suite struct JobLifecycleTests {
    @Test func aJobRunsOnceAndEndsOnce() {
        #expect(JobStatus.active == [.queued, .running])
        #expect(JobStatus.running.predecessors == [.queued])
        #expect(JobStatus.finished.predecessors == [.running])
        #expect(JobStatus.cancelled.predecessors == [.queued, .running])
        #expect(JobStatus.failed.predecessors == [.queued, .running])
        for status in [JobStatus.finished, .failed, .cancelled] {
            #expect(status.isTerminal && status.successors.isEmpty)
        }
        #expect(JobStatus.queued.predecessors.isEmpty)
    }

    /// The upload table, written out: every state with the states it may go to.
    @Test func anUploadIsReceivedThenValidatedOrEndsOnce() {
        let table: [UploadState: [UploadState]] = [
            .unspecified: [], .receiving: [.validating, .failed, .expired, .abandoned], .validating: [.finished, .failed],
            .finished: [], .failed: [], .expired: [], .abandoned: [],
        ]
        for state in UploadState.allCases { #expect(state.successors == table[state], "\(state)") }
        #expect(UploadState.unfinished == [.receiving, .validating])
        #expect(UploadState.failed.predecessors == [.receiving, .validating])
        #expect(UploadState.abandoned.predecessors == [.receiving])
    }
}
