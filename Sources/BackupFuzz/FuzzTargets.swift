import BackupRules
import BackupStorage
import BackupServer
import BackupWire
import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// The parsers that read what a client, an upload or a dump hands the
/// server, each as a function of one input that must return (refusing the
/// input is fine) and never crash, hang or leak. `backup-fuzz` feeds them
/// to libFuzzer (`make fuzz`) and replays their corpora (`Tests/Fuzz/NAME/`)
/// in `make test`; a crash libFuzzer finds is saved there and stays a test.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The RPC frame decoder: length prefixes and `Frame` messages, split
    /// across reads as a socket would, with the start frame's validation.
    case frames
    /// Every request message of the API through the wire validation and
    /// protobuf-c: the first byte picks the message type.
    case requests
    /// The snapshot archive reader (gzip, tar, names, sizes, `.metadata`).
    case archive
    /// pg_dump's custom-format table of contents and data blocks, as the
    /// offsets filler reads them; input not starting `PGDMP` is read as a
    /// `pg_restore -l` listing.
    case dump
    /// A download URL's path and query against the signing keys.
    case signedURL = "signed-url"
    /// An HTTP connection's bytes through the request decoder to the
    /// download endpoint's decision and the `Range` answer.
    case http

    /// Runs the target once on `input`.
    public func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .frames: Self.frames(input)
        case .requests: Self.requests(input)
        case .archive: Self.archive(input)
        case .dump: Self.dump(input)
        case .signedURL: Self.signedURL(input)
        case .http: Self.http(input)
        }
    }

    private static func frames(_ input: UnsafeRawBufferPointer) {
        var decoder = FrameDecoder(maxFrameBytes: 64 * 1024)
        var buffer = ByteBuffer()
        // The input arrives in reads of 1 to 64 bytes, sized by its own bytes.
        var rest = input[...]
        while !rest.isEmpty {
            let read = rest.prefix(Int(rest.first! & 63) + 1)
            rest = rest.dropFirst(read.count)
            buffer.writeBytes(read)
            do {
                while let frame = try decoder.decode(buffer: &buffer) {
                    if case .message(let bytes) = frame.kind { decodeRequest(bytes, as: Int(frame.callID)) }
                }
            } catch {
                return  // the connection would be closed here
            }
        }
    }

    private static func requests(_ input: UnsafeRawBufferPointer) {
        guard let selector = input.first else { return }
        decodeRequest(Array(input.dropFirst()), as: Int(selector))
    }

    /// Every request message type of `Backups`, in the order of Methods.swift.
    static let requestTypes: [any WireMessage.Type] = [
        ServerInfoRequest.self, RegisterEnvironmentRequest.self, ListEnvironmentsRequest.self, GetEnvironmentRequest.self,
        UpdateEnvironmentRequest.self, DeleteEnvironmentRequest.self, SetEnvironmentStateRequest.self,
        CreateBackupRequest.self, ListBackupsRequest.self, GetBackupRequest.self, UpdateBackupRequest.self,
        DeleteBackupRequest.self, VerifyBackupRequest.self, GetJobRequest.self, WatchJobRequest.self, CancelJobRequest.self,
        RestoreBackupRequest.self, ListActivityRequest.self, RequestDownloadRequest.self, GetDownloadRequest.self,
        StartUploadRequest.self, UploadChunk.self, FinishUploadRequest.self, GetUploadRequest.self, AbandonUploadRequest.self,
        GetScheduleRequest.self, SetScheduleRequest.self, CreateTokenRequest.self, RevokeTokenRequest.self,
        ListTokensRequest.self, CallStart.self,
    ]

    private static func decodeRequest(_ bytes: [UInt8], as selector: Int) {
        let type = requestTypes[selector % requestTypes.count]
        guard let message = try? type.init(validating: bytes) else { return }
        // What was let in encodes again, and to bytes that decode to the same encoding.
        let encoded = message.serializedBytes()
        guard let again = try? type.init(validating: encoded) else {
            fatalError("\(type) decoded from a request does not decode from its own encoding")
        }
        precondition(again.serializedBytes() == encoded, "\(type) does not encode the same twice")
    }

    /// One file per process for the readers that take a path.
    private static let scratch = NSTemporaryDirectory() + "backup-fuzz-\(getpid())"

    private static func withScratchFile(_ input: UnsafeRawBufferPointer, _ body: (String) throws -> Void) {
        guard FileManager.default.createFile(atPath: scratch, contents: Data(input)) else {
            fatalError("cannot write \(scratch)")
        }
        defer { unlink(scratch) }
        try? body(scratch)
    }

    private static func archive(_ input: UnsafeRawBufferPointer) {
        var limits = SnapshotArchiveReader.Limits(members: 64)
        limits.memberBytes = 1 << 20
        limits.expandedBytes = 4 << 20
        limits.ratioGrace = 1 << 20
        limits.metadataBytes = 64 * 1024
        withScratchFile(input) { path in
            _ = try SnapshotArchiveReader(limits: limits).read(path) { _, _, _ in nil }
        }
    }

    private static func dump(_ input: UnsafeRawBufferPointer) {
        // A custom-format dump starts so; anything else is read as a listing.
        guard input.starts(with: "PGDMP".utf8) else {
            let text = String(decoding: input, as: UTF8.self)
            _ = DumpListing(text)
            _ = DumpListing.sequenceValues(in: text)
            return
        }
        withScratchFile(input) { path in
            let filled = try DumpOffsets.fill(path)
            // Offsets are written in place: the dump keeps its size.
            let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1
            precondition(size == input.count, "filling \(filled) offsets changed the dump's size")
        }
    }

    /// A fixed key pair, so a signature the fuzzer learns keeps opening.
    static let keys = try! URLSigningKeys(parsing: """
        old = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8
        new = ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8
        """)
    static let now: Int64 = 1_800_000_000

    private static func signedURL(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        let (path, query) = text.firstIndex(of: "?").map { (String(text[..<$0]), String(text[text.index(after: $0)...])) }
            ?? (text, "")
        _ = try? keys.verify(path: path, query: query, now: now)
        // Whatever the path, the link signed for it opens until it expires, and only with its own text.
        let signed = keys.signedQuery(path: path, expires: now + 60)
        do { try keys.verify(path: path, query: signed, now: now) } catch { fatalError("a signed link is refused: \(error)") }
        _ = try? URLSigningKeys(parsing: text)
    }

    private static func http(_ input: UnsafeRawBufferPointer) {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        do {
            try DownloadEndpoint.addHTTPHandlers(to: channel.pipeline.syncOperations)
            try channel.writeInbound(ByteBuffer(bytes: input))
        } catch {
            return  // refused by the decoder: answered 400 or 431 and closed
        }
        let file = DownloadResponse.File(name: "snapshot.tar.gz", size: 1 << 20, sha256: String(repeating: "ab", count: 32),
                                         modified: now - 3600)
        while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
            guard case .head(let head) = part else { continue }
            _ = SignedDownloadRequest(head, keys: keys, now: now)
            let response = DownloadResponse(for: file, range: head.headers.first(name: "Range"),
                                            ifRange: head.headers.first(name: "If-Range"))
            if case let .part(first, last) = response.body {
                precondition(first <= last && last < file.size, "range \(first)-\(last) lies outside the file")
            }
        }
    }
}

/// The inputs kept for a target: seeds and every input that once crashed it.
public enum FuzzCorpus {
    /// The files at `path`: itself, or a folder's regular files sorted by name.
    public static func files(at path: String) throws -> [String] {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        guard isFolder.boolValue else { return [path] }
        return try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted()
            .map { path + "/" + $0 }
    }

    /// Runs one saved input through `target`.
    public static func run(_ target: FuzzTarget, _ file: String) throws {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes.withUnsafeBytes { target.run($0) }
    }
}
