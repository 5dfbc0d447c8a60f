import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// Serves the signed download URLs over HTTP/1.1, on the RPC port: GET and
/// HEAD of `/v1/downloads/ID/FILE?expires=…&kid=…&sig=…`, with keep-alive
/// and single byte ranges. The URL is the access, so its signature is
/// checked before anything else is looked up. Archives are read from the
/// blob store a range at a time (so any process serves any link), the
/// answers streaming at once sharing a budget for their ranges, and no more
/// than a few chunks are written ahead of what the socket has taken
/// (`HTTPResponseWriter`), so a slow client holds its share of the server's
/// memory, not the file.
package struct DownloadEndpoint: Sendable {
    let links: DownloadLinks
    let catalog: Catalog
    let stores: NamespaceStores
    let limits: ConnectionLimits
    let slots: DownloadSlots
    /// Where archive ranges are read: the server's thread pool for blocking work.
    let threadPool: NIOThreadPool
    let metrics: ServiceMetrics
    let logger: Logger
    var accessLog: AccessLog { AccessLog(logger: logger) }

    /// Bytes written to the socket at a time: large enough to keep a fast
    /// client's socket busy, small enough that a slow one holds about 1.4
    /// MiB with its TLS records beside the range being sent.
    static let chunkSize = 256 * 1024

    /// What the answers streaming at once hold of archives, shared among
    /// them: a download alone reads the store's full ranges (an object
    /// store's part, one request each, keeps it near the store's pace);
    /// many slow ones share this, each reading at least a chunk at a time.
    static let rangeBudget = 64 << 20

    /// What the request decoder holds of one request before it answers 431:
    /// a request line or one header field of 8 KiB, 16 KiB of them all, 100 fields.
    static let decoderLimits: NIOHTTPDecoderLimitConfiguration = {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 8 * 1024
        limits.maxHeaderListSize = 16 * 1024
        limits.maxHeaderFieldCount = 100
        return limits
    }()

    typealias HTTPChannel = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Sets a connection's pipeline up for HTTP; on its event loop.
    static func configure(_ channel: any Channel) throws -> HTTPChannel {
        try addHTTPHandlers(to: channel.pipeline.syncOperations)
        return try HTTPChannel(wrappingChannelSynchronously: channel)
    }

    /// The handlers that turn a connection's bytes into requests and
    /// answers into bytes, refusing what the decoder cannot take.
    package static func addHTTPHandlers(to pipeline: ChannelPipeline.SynchronousOperations) throws {
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: true, withErrorHandling: false, withOutboundHeaderValidation: true,
            withEncoderConfiguration: .init(), withDecoderLimitConfiguration: decoderLimits)
        try pipeline.addHandler(HTTPErrorResponder())
    }

    /// Answers the connection's requests in order until it closes, a request
    /// asks to close, or the client is too slow or unknown: it must ask for
    /// a ready download with a signed URL within the authentication timeout
    /// of the handshake, and again within that long of each such answer's
    /// end (other requests, 403s and 404s, do not count: one URL, once, does
    /// not keep a connection for good); each whole request must arrive
    /// within the partial-frame timeout of the previous answer (or of the
    /// handshake); each chunk of an answer must be taken within the idle
    /// timeout. `verified` hears each request for a ready download.
    func serve(_ channel: HTTPChannel, verified: @escaping @Sendable () -> Void) async {
        let deadline = ConnectionDeadline(channel: channel.channel)
        let unverified = ConnectionDeadline(channel: channel.channel)
        unverified.arm(limits.authenticationTimeout)
        deadline.arm(limits.partialFrameTimeout)
        do {
            try await withTaskCancellationHandler {
                try await channel.executeThenClose { inbound, _ in
                    let writer = HTTPResponseWriter(channel: channel.channel, deadline: deadline, stallTimeout: limits.idleTimeout)
                    let peer = channel.channel.peerAddress
                    var request: HTTPRequestHead?
                    for try await part in inbound {
                        switch part {
                        case .head(let head):
                            request = head
                        case .body:
                            continue  // a GET's body means nothing here
                        case .end:
                            guard let head = request else { continue }
                            request = nil
                            deadline.disarm()
                            let began = ContinuousClock.now
                            writer.begin(CallAudit.newRequestID())
                            // An answer cut off (the client left) is logged and recorded with what it sent.
                            var cutOff: (any Error)?
                            do {
                                try await respond(to: head, writer) {
                                    unverified.disarm()
                                    verified()
                                }
                            } catch {
                                cutOff = error
                            }
                            await account(for: head, answered: writer.answered, peer: peer, took: began.duration(to: .now))
                            if let cutOff { throw cutOff }
                            guard head.isKeepAlive else { return }
                            // After an answer to a ready download, the next must come as soon again.
                            unverified.armUnlessArmed(limits.authenticationTimeout)
                            deadline.arm(limits.partialFrameTimeout)
                        }
                    }
                }
            } onCancel: {
                channel.channel.close(promise: nil)
            }
        } catch {
            logger.debug("download connection ended", metadata: ["error": "\(error)"])
        }
        deadline.disarm()
        unverified.disarm()
    }

    /// Writes a request's access-log line and, when it named a download
    /// the catalog knows with a link this server signed (expired or not),
    /// records the fetch as its namespace's activity. A link that is
    /// unknown or forged is only logged: it belongs to no namespace anyone
    /// can vouch for.
    private func account(for head: HTTPRequestHead, answered: HTTPResponseWriter.Answered, peer: String, took duration: Duration) async {
        accessLog.request(id: answered.requestID, peer: peer, method: "\(head.method)", uri: head.uri, status: answered.status,
                          duration: duration, bytesOut: answered.bodyBytes, download: answered.download)
        metrics.requestAnswered(status: answered.status, bytesOut: answered.bodyBytes, duration: duration)
        guard let download = answered.download else { return }
        let fetch = DownloadFetch(downloadID: download.id, peer: peer, requestID: answered.requestID, method: "\(head.method)",
                                  range: head.headers.first(name: "Range") ?? "", status: answered.status, bytesSent: answered.bodyBytes)
        do {
            try await catalog.recordDownloadFetch(fetch)
        } catch {
            logger.warning("cannot record a download's fetch", metadata: ["download": "\(download.id)", "request_id": "\(answered.requestID)",
                                                                          "error": "\(error)"])
        }
    }

    /// Answers one request; whether it was for a ready download, with a signed URL.
    private func respond(to head: HTTPRequestHead, _ outbound: HTTPResponseWriter, verified: @Sendable () -> Void) async throws {
        let keepAlive = head.isKeepAlive
        let answer = PlainAnswer(version: head.version, keepAlive: keepAlive, isHead: head.method == .HEAD)
        let id: String, fileName: Substring
        switch SignedDownloadRequest(head, keys: links.keys, now: Int64(Date().timeIntervalSince1970)) {
        case let .refused(status, reason, extra):
            try await answer.send(status, reason, extra: extra, on: outbound)
            return
        case let .expired(expiredID):
            // Who still holds an old link of a download, and tries it, is its namespace's to know.
            if let namespace = try? await catalog.namespaceOfDownload(id: expiredID) { outbound.note(download: expiredID, namespace: namespace) }
            try await answer.send(.forbidden, URLRefusal.expired.description, on: outbound)
            return
        case let .signed(signedID, signedFileName):
            (id, fileName) = (signedID, signedFileName)
        }
        let record: DownloadRecord
        do {
            record = try await catalog.download(id: id)
        } catch {
            switch publicError(for: error, logger: logger.with(["download": "\(id)"])) {
            case .notFound, .invalidArgument: try await answer.send(.notFound, "no such download", on: outbound)
            case let told: try await answer.send(httpStatus(told), told.description, on: outbound)
            }
            return
        }
        outbound.note(download: id, namespace: record.namespace)
        guard record.state == .ready, DownloadLinks.fileName(record)[...] == fileName, let hash = ContentHash(hex: record.sha256),
              let name = ContentHash(hex: record.blob) else {
            try await answer.send(.notFound, "no such download", on: outbound)
            return
        }
        verified()
        let archive = StoredBlob(hash: hash, size: record.size, name: name)
        let file = DownloadResponse.File(name: DownloadLinks.fileName(record), size: record.size, sha256: record.sha256,
                                         modified: record.readyUnixMS / 1000)
        let response = DownloadResponse(for: file, range: head.headers.first(name: "Range"), ifRange: head.headers.first(name: "If-Range"))
        let bytes: (first: UInt64, last: UInt64)? = switch response.body {
        case _ where head.method == .HEAD: nil
        case let .part(first, last): (first, last)
        case .whole where file.size > 0: (0, file.size - 1)
        case .whole, .unsatisfiable: nil
        }
        guard bytes == nil || slots.acquire(record.namespace) else {
            try await answer.send(.serviceUnavailable, "too many downloads at once; try again in a few seconds",
                                  extra: [("Retry-After", "5")], on: outbound)
            return
        }
        defer { if bytes != nil { slots.release(record.namespace) } }
        // The namespace's view of the store, once per answer with a body: it checks the size, then serves the bytes.
        let store = bytes == nil ? nil : try await stores.store(for: record.namespace)
        if let store {
            // Asked of the store only for an answer with a body, within the namespace's download slots. Checked
            // before any header goes out: a 200 must be followed by the whole archive.
            switch try await threadPool.runIfActive({ try store.size(of: archive) }) {
            case nil:
                // Its backup deleted and every URL expired since the URL was signed, or lost with the store.
                try await answer.send(.notFound, "no such download", on: outbound)
                return
            case let found? where found != record.size:
                logger.error("a ready archive is not the blob it was stored as", metadata: ["download": "\(id)", "blob": "\(archive.name)"])
                try await answer.send(.internalServerError, "the archive cannot be read; the server log has the details", on: outbound)
                return
            default: break
            }
        }
        var headers = HTTPHeaders(response.headers)
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .init(statusCode: response.status), headers: headers)))
        if let (first, last) = bytes, let store { try await send(archive, from: first, through: last, of: store, on: outbound) }
        try await outbound.write(.end(nil))
        try await outbound.drain()
    }

    /// Streams bytes `first` through `last` of the archive, a range of the
    /// store's `rangeReadSize` (or this answer's share of `rangeBudget`, if
    /// less) read at a time and written in chunks. The
    /// next range is read only once the writer has taken the last one: no
    /// read-ahead to hold. An archive removed meanwhile (its backup deleted,
    /// its URLs expired) ends the answer at its next range.
    private func send(_ archive: StoredBlob, from first: UInt64, through last: UInt64, of store: any BlobStore,
                      on outbound: HTTPResponseWriter) async throws {
        var offset = first
        while offset <= last {
            let share = Self.rangeBudget / max(1, slots.streaming)
            let length = min(UInt64(max(Self.chunkSize, min(store.rangeReadSize, share))), last - offset + 1)
            var range = try await threadPool.runIfActive { [offset] in try store.read(archive, at: offset, length: Int(length)) }
            // An archive cut short would leave the client waiting for bytes its Content-Length promised.
            guard range.readableBytes == Int(length) else { throw ArchiveShorterThanRecorded() }
            while range.readableBytes > 0, let chunk = range.readSlice(length: min(Self.chunkSize, range.readableBytes)) {
                try await outbound.write(.body(.byteBuffer(chunk)))
            }
            offset += length
        }
    }
}

/// What a request asks of the endpoint, decided from its head and the
/// signing keys alone, before the catalog is asked anything: its method, its
/// path's shape and its signature. Everything an unauthenticated client
/// sends reaches this first (and the fuzz target `http` with it).
package enum SignedDownloadRequest {
    /// Answered at once, with a status, a reason and extra header fields.
    case refused(HTTPResponseStatus, String, extra: [(String, String)])
    /// A signed URL of a download, still to be looked up.
    case signed(id: String, fileName: Substring)
    /// A URL this server signed for a download, past its expiry: refused,
    /// and, being authentic, recorded under the download's namespace.
    case expired(id: String)

    package init(_ head: HTTPRequestHead, keys: URLSigningKeys?, now: Int64) {
        guard head.method == .GET || head.method == .HEAD else {
            self = .refused(.methodNotAllowed, "only GET and HEAD are served here", extra: [("Allow", "GET, HEAD")])
            return
        }
        let (path, query) = head.uri.firstIndex(of: "?").map { (head.uri[..<$0], head.uri[head.uri.index(after: $0)...]) }
            ?? (head.uri[...], "")
        guard let (id, fileName) = DownloadLinks.parse(path: path), let keys else {
            self = .refused(.notFound, "no such download", extra: [])
            return
        }
        do {
            try keys.verify(path: String(path), query: String(query), now: now)
        } catch .expired {
            self = .expired(id: id)
            return
        } catch {
            self = .refused(.forbidden, error.description, extra: [])
            return
        }
        self = .signed(id: id, fileName: fileName)
    }
}

/// A stored archive ended before its recorded size: the connection is closed mid-answer.
private struct ArchiveShorterThanRecorded: Error {}

/// A short plain-text answer: refusals and errors.
private struct PlainAnswer {
    let version: HTTPVersion
    let keepAlive: Bool
    let isHead: Bool

    func send(_ status: HTTPResponseStatus, _ reason: String, extra: [(String, String)] = [], on outbound: HTTPResponseWriter) async throws {
        let body = ByteBuffer(string: reason + "\n")
        var headers = HTTPHeaders(plainTextHeaders(length: body.readableBytes) + extra)
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        try await outbound.write(.head(HTTPResponseHead(version: version, status: status, headers: headers)))
        if !isHead { try await outbound.write(.body(.byteBuffer(body))) }
        try await outbound.write(.end(nil))
        try await outbound.drain()
    }
}

func plainTextHeaders(length: Int) -> [(String, String)] {
    [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", String(length)), ("Cache-Control", "no-store"),
     ("X-Content-Type-Options", "nosniff")]
}

/// Writes a response's parts with back-pressure from the socket itself: at
/// most `window` parts are on their way at once, and the next waits until
/// the oldest has gone into the socket. (The async channel's own writer
/// learns of a full socket only after its writes reach the event loop, by
/// which time a fast producer has queued far more.) A client that takes
/// nothing for `stallTimeout` is closed.
///
/// It also keeps what the access log says of the answer under way: every
/// answer's head carries its request id (`X-Request-Id`), and the status
/// and body bytes written are counted.
private final class HTTPResponseWriter: Sendable {
    private let channel: any Channel
    private let deadline: ConnectionDeadline
    private let stallTimeout: Duration
    private let inFlight = NIOLockedValueBox<[EventLoopFuture<Void>]>([])
    static let window = 4

    /// The answer under way, as the access log reports it.
    struct Answered {
        var requestID = ""
        /// 0 until a head is written (the client left first).
        var status = 0
        var bodyBytes: UInt64 = 0
        var download: (id: String, namespace: String)?
    }

    private let current = NIOLockedValueBox(Answered())

    var answered: Answered { current.withLockedValue { $0 } }

    /// A new request's answer starts.
    func begin(_ requestID: String) {
        current.withLockedValue { $0 = Answered(requestID: requestID) }
    }

    /// The answer is about this download of `namespace`.
    func note(download id: String, namespace: String) {
        current.withLockedValue { $0.download = (id, namespace) }
    }

    init(channel: any Channel, deadline: ConnectionDeadline, stallTimeout: Duration) {
        self.channel = channel
        self.deadline = deadline
        self.stallTimeout = stallTimeout
    }

    func write(_ part: HTTPServerResponsePart) async throws {
        var part = part
        switch part {
        case .head(var head):
            let requestID = current.withLockedValue { answered in
                answered.status = Int(head.status.code)
                return answered.requestID
            }
            head.headers.replaceOrAdd(name: "X-Request-Id", value: requestID)
            part = .head(head)
        case .body(.byteBuffer(let bytes)):
            current.withLockedValue { $0.bodyBytes += UInt64(bytes.readableBytes) }
        default:
            break
        }
        if let oldest = inFlight.withLockedValue({ $0.count >= Self.window ? $0.removeFirst() : nil }) {
            try await waitWritten(oldest)
        }
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(part, promise: written)
        inFlight.withLockedValue { $0.append(written.futureResult) }
    }

    /// Waits until everything written is in the socket.
    func drain() async throws {
        let pending = inFlight.withLockedValue { inFlight in
            defer { inFlight.removeAll() }
            return inFlight
        }
        for written in pending { try await waitWritten(written) }
    }

    private func waitWritten(_ written: EventLoopFuture<Void>) async throws {
        deadline.arm(stallTimeout)
        defer { deadline.disarm() }
        try await written.get()
    }
}

/// Closes a connection unless disarmed in time; on any thread.
final class ConnectionDeadline: Sendable {
    private let channel: any Channel
    private let scheduled = NIOLockedValueBox<Scheduled<Void>?>(nil)

    init(channel: any Channel) {
        self.channel = channel
    }

    func arm(_ duration: Duration) {
        set(duration, keepingARunningOne: false)
    }

    /// Arms the deadline unless it is already running.
    func armUnlessArmed(_ duration: Duration) {
        set(duration, keepingARunningOne: true)
    }

    func disarm() {
        scheduled.withLockedValue { $0?.cancel(); $0 = nil }
    }

    private func set(_ duration: Duration, keepingARunningOne: Bool) {
        let channel = self.channel
        scheduled.withLockedValue {
            guard !keepingARunningOne || $0 == nil else { return }
            $0?.cancel()
            $0 = channel.eventLoop.scheduleTask(in: TimeAmount(duration)) { channel.close(promise: nil) }
        }
    }
}

/// Answers a request the decoder could not read: 431 for a request line
/// or header section over the limits, 400 for anything else; then the
/// decoder closes the connection. Stays quiet when an answer is already
/// under way, which the client could not tell from this one.
final class HTTPErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Never
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var answering = false
    /// A malformed request was answered: the connection is closing, and
    /// what the decoder makes of the bytes after it gets no second answer.
    private var refused = false

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError, !answering, !refused {
            refused = true
            let (status, reason) = error == .headerOverflow
                ? (HTTPResponseStatus.requestHeaderFieldsTooLarge, "request line or header section too large")
                : (.badRequest, "malformed HTTP request")
            let body = ByteBuffer(string: reason + "\n")
            let headers = HTTPHeaders(plainTextHeaders(length: body.readableBytes) + [("Connection", "close")])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: answering = true
        case .end: answering = false
        default: break
        }
        context.write(data, promise: promise)
    }
}

/// How many answers stream a file at once, in all and for one namespace:
/// each holds about 1.4 MiB (its chunks and their TLS records) while its client is slow, so clients that
/// keep answers open cannot take the server's memory, and one namespace's
/// cannot take every other's downloads. Past either, a request is answered
/// 503 with `Retry-After`.
final class DownloadSlots: Sendable {
    private let maximum: Int
    private let perNamespace: Int
    private let state = NIOLockedValueBox<(total: Int, byNamespace: [String: Int])>((0, [:]))

    init(maximum: Int, perNamespace: Int) {
        self.maximum = maximum
        self.perNamespace = perNamespace
    }

    func acquire(_ namespace: String) -> Bool {
        state.withLockedValue { state in
            guard state.total < maximum, state.byNamespace[namespace, default: 0] < perNamespace else { return false }
            state.total += 1
            state.byNamespace[namespace, default: 0] += 1
            return true
        }
    }

    /// How many downloads stream now.
    var streaming: Int { state.withLockedValue { $0.total } }

    func release(_ namespace: String) {
        state.withLockedValue { state in
            state.total -= 1
            state.byNamespace[namespace, default: 1] -= 1
            if state.byNamespace[namespace] == 0 { state.byNamespace[namespace] = nil }
        }
    }
}
