import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire

/// What a handler knows about its call: who is calling, and for what.
public struct CallContext: Sendable {
    public let caller: Caller
    public let method: String
    /// The call's access-log record: its request id, and the namespace it acts in once authorized.
    public let audit: CallAudit

    public init(caller: Caller, method: String, audit: CallAudit = CallAudit(origin: .inProcess)) {
        self.caller = caller
        self.method = method
        self.audit = audit
    }

    /// The namespace a request names, or the caller's own when it names none.
    /// A platform token belongs to no namespace, so its requests must name one.
    public func namespace(_ requested: String) throws(BackupError) -> String {
        guard requested.isEmpty else { return requested }
        guard caller.role != .platform else {
            throw .invalidArgument("namespace is required: platform token \"\(caller.tokenName)\" belongs to no namespace")
        }
        return caller.namespace
    }

    /// Refuses the call unless the caller holds `role` (or a higher one) in
    /// `namespace`. A platform token passes only where `platform` says the
    /// method is the platform's too (environments and tokens), or where
    /// `role` is platform itself.
    public func authorize(_ role: Role, in namespace: String, platform: Bool = false) throws(BackupError) {
        guard !namespace.isEmpty || role == .platform else { throw .invalidArgument("namespace is required") }
        if !namespace.isEmpty { audit.authorized(in: namespace) }
        if caller.role == .platform {
            guard platform || role == .platform else {
                throw .permissionDenied(
                    "platform token \"\(caller.tokenName)\" places environments and makes tokens; \(shortMethod) needs \(role) in namespace \(namespace)")
            }
            return
        }
        guard caller.namespace == namespace else {
            throw .permissionDenied("token \"\(caller.tokenName)\" is for namespace \(caller.namespace), not \(namespace)")
        }
        guard caller.role.includes(role) else {
            throw .permissionDenied(
                "token \"\(caller.tokenName)\" has role \(caller.role) in \(namespace); \(shortMethod) needs \(role)")
        }
    }

    /// For a record found by its id: a record the caller cannot see at all
    /// (another namespace's) answers `unknown`, exactly as an id that does
    /// not exist, so ids say nothing about other namespaces.
    public func authorize(_ role: Role, reaching namespace: String, platform: Bool = false,
                          orAnswer unknown: @autoclosure () -> BackupError) throws(BackupError) {
        let visible = caller.role == .platform ? platform : caller.namespace == namespace
        guard visible else { throw unknown() }
        try authorize(role, in: namespace, platform: platform)
    }

    private var shortMethod: String { String(method.split(separator: "/").last ?? Substring(method)) }
}
