import BackupCatalog
import BackupCore
import BackupWire

/// What a handler knows about its call: who is calling, and for what.
public struct CallContext: Sendable {
    public let caller: Caller
    public let method: String

    public init(caller: Caller, method: String) {
        self.caller = caller
        self.method = method
    }

    /// The namespace a request names, or the caller's own when it names none.
    public func namespace(_ requested: String) -> String {
        requested.isEmpty ? caller.namespace : requested
    }

    /// Refuses the call unless the caller holds `role` (or a higher one) in `namespace`.
    public func authorize(_ role: Role, in namespace: String) throws(BackupError) {
        guard caller.namespace == namespace else {
            throw .permissionDenied("token \"\(caller.tokenName)\" is for namespace \(caller.namespace), not \(namespace)")
        }
        guard caller.role >= role else {
            throw .permissionDenied(
                "token \"\(caller.tokenName)\" has role \(caller.role) in \(namespace); \(shortMethod) needs \(role)")
        }
    }

    private var shortMethod: String { String(method.split(separator: "/").last ?? Substring(method)) }
}
