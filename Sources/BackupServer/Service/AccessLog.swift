import BackupCatalog
import BackupRules
import Logging
import Synchronization

/// One line per RPC call and per HTTP request, at info level, so an
/// operator can answer "who did what, from where, and when": the request id
/// the client was told (a status's `request_id`, the `X-Request-Id` header),
/// the peer, the caller (token id and name, never the token), the namespace
/// the call acted in, what was asked (a download's path without its signed
/// query), the status, how long it took and the bytes each way. Anything a
/// client chose (a method name, a path) is cut to 200 characters with its
/// control characters replaced, so a line stays one line.
struct AccessLog: Sendable {
    let logger: Logger

    /// Logs an RPC call that ended with `status`.
    func call(_ call: CallAudit, method: String, status: String, duration: Duration, bytesIn: Int, bytesOut: Int) {
        var metadata: Logger.Metadata = [
            "request_id": "\(call.requestID)", "peer": "\(call.origin.peer)", "method": "\(Self.printable(method))",
            "status": "\(status)", "duration_ms": "\(Self.milliseconds(duration))", "bytes_in": "\(bytesIn)", "bytes_out": "\(bytesOut)",
        ]
        if let client = call.origin.clientIdentity { metadata["client"] = "\(Self.printable(client))" }
        if let caller = call.caller {
            metadata["token_id"] = "\(caller.tokenID)"
            metadata["token_name"] = "\(Self.printable(caller.tokenName))"
        }
        if let namespace = call.namespace { metadata["namespace"] = "\(namespace)" }
        logger.info("rpc call", metadata: metadata)
    }

    /// Logs an HTTP request answered with `status`.
    func request(id: String, peer: String, method: String, uri: String, status: Int, duration: Duration, bytesOut: UInt64,
                 download: (id: String, namespace: String)?) {
        var metadata: Logger.Metadata = [
            "request_id": "\(id)", "peer": "\(peer)", "http_method": "\(Self.printable(method))",
            "path": "\(Self.printable(String(uri.prefix { $0 != "?" })))", "status": "\(status)",
            "duration_ms": "\(Self.milliseconds(duration))", "bytes_out": "\(bytesOut)",
        ]
        if let download {
            metadata["download"] = "\(download.id)"
            metadata["namespace"] = "\(download.namespace)"
        }
        logger.info("http request", metadata: metadata)
    }

    static let longest = 200

    /// What a client sent, cut and with control characters (a newline, an escape) as `?`.
    static func printable(_ text: String) -> String {
        BackupRules.printable(text, longest: longest)
    }

    private static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let ms = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return String(format: "%.1f", ms)
    }
}

/// Where a call came from, as its connection knows it.
public struct CallOrigin: Sendable {
    /// The client's address, or "in-process".
    public let peer: String
    /// The subject of the client's certificate, under mutual TLS.
    public let clientIdentity: String?

    public init(peer: String, clientIdentity: String? = nil) {
        self.peer = peer
        self.clientIdentity = clientIdentity
    }

    public static let inProcess = CallOrigin(peer: "in-process")
}

/// What a call's access-log line says about it, filled in as the call
/// goes: its id and origin from the start, its caller once the token is
/// accepted, the namespace once a handler authorizes it there.
public final class CallAudit: Sendable {
    public let requestID: String
    public let origin: CallOrigin
    private let found = Mutex<(caller: Caller?, namespace: String?)>((nil, nil))

    public init(requestID: String = CallAudit.newRequestID(), origin: CallOrigin) {
        self.requestID = requestID
        self.origin = origin
    }

    var caller: Caller? { found.withLock { $0.caller } }
    var namespace: String? { found.withLock { $0.namespace } }

    func authenticated(_ caller: Caller) {
        found.withLock { $0.caller = caller }
    }

    /// The first namespace the call was authorized in: the one it acted in.
    func authorized(in namespace: String) {
        found.withLock { if $0.namespace == nil { $0.namespace = namespace } }
    }

    /// 16 hex digits, random: unique enough to find one call among a day's.
    public static func newRequestID() -> String {
        let value = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - value.count) + value
    }
}
