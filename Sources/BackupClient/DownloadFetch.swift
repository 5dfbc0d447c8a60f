import BackupWire
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// Fetches a signed download URL over HTTPS (ALPN `http/1.1`), handing the
/// body on as it arrives, so a client of the download endpoint holds one
/// chunk at a time, never the archive.
public struct DownloadFetch: Sendable {
    /// What the server answered with, before the body.
    public struct Start: Sendable {
        /// True when the server sends the rest of the file after the bytes
        /// already held (206); false when it sends the whole file (200).
        public let resumed: Bool
        /// The size of the whole file.
        public let total: UInt64
    }

    public let url: URL
    /// The TLS trust and client certificate to use; its address is the URL's.
    public let settings: ClientSettings

    public init(url text: String, trusting base: ClientSettings) throws {
        guard let url = URL(string: text), url.scheme == "https", let host = url.host, !url.path.isEmpty else {
            throw RPCError(.invalidArgument, "\"\(text)\" is not an https download URL")
        }
        var settings = base
        settings.host = host
        settings.port = url.port ?? 443
        self.url = url
        self.settings = settings
    }

    /// GETs the file. With `offset` > 0 it asks for the bytes from there on,
    /// if the file is still the one whose ETag is `etag`; `start` hears
    /// which the server chose, then `body` gets every chunk in order.
    public func fetch(from offset: UInt64, etag: String, start: (Start) throws -> Void,
                      body: (ByteBuffer) throws -> Void) async throws {
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> = try await settings.connect(protocol: "http/1.1") {
            try $0.pipeline.syncOperations.addHTTPClientHandlers()
        }
        let target = url.path + (url.query.map { "?" + $0 } ?? "")
        var headers = HTTPHeaders([("Host", url.host! + (url.port.map { ":\($0)" } ?? "")), ("Connection", "close")])
        if offset > 0 {
            headers.add(name: "Range", value: "bytes=\(offset)-")
            headers.add(name: "If-Range", value: "\"\(etag)\"")
        }
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: target, headers: headers)))
            try await outbound.write(.end(nil))
            var refusal: (status: HTTPResponseStatus, text: String)?
            for try await part in inbound {
                switch part {
                case .head(let head) where head.status == .ok || head.status == .partialContent:
                    let length = head.headers.first(name: "Content-Length").flatMap(UInt64.init) ?? 0
                    let resumed = head.status == .partialContent
                    try start(Start(resumed: resumed, total: resumed ? offset + length : length))
                case .head(let head):
                    refusal = (head.status, "")
                case .body(let chunk):
                    if refusal == nil { try body(chunk) } else { refusal!.text += String(buffer: chunk) }
                case .end:
                    if let (status, text) = refusal {
                        throw RPCError(status == .notFound ? .notFound : status == .forbidden ? .permissionDenied : .unavailable,
                                       "the download URL answered \(status.code) \(status.reasonPhrase): "
                                           + text.trimmingCharacters(in: .whitespacesAndNewlines))
                    }
                    return
                }
            }
            throw RPCError(.unavailable, "the server closed the connection before the download ended")
        }
    }
}
