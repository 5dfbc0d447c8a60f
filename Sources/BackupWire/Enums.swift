/// What a token may do. Viewer, operator and admin hold in one namespace,
/// each including the ones below it; platform is the placing service's role,
/// outside that order (see `includes`).
public enum Role: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, viewer, `operator`, admin, platform

    /// Whether this namespace role grants what `other` does. Platform is not
    /// in the order: it grants only itself, and no namespace role grants it.
    public func includes(_ other: Role) -> Bool {
        self == .platform || other == .platform ? self == other : rawValue >= other.rawValue
    }

    public var description: String { Role.names[self]! }
    private static let names: [Role: String] = [
        .unspecified: "unspecified", .viewer: "viewer", .operator: "operator", .admin: "admin", .platform: "platform",
    ]
}

public enum EnvironmentState: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, running, stopped
    public var description: String { ["unspecified", "running", "stopped"][Int(rawValue)] }
}

/// A backup's life: PROCESSING until its job ends FINISHED or FAILED.
public enum BackupStatus: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, processing, failed, finished
    public var description: String { ["unspecified", "processing", "failed", "finished"][Int(rawValue)] }
}

/// Why a backup exists; the kind decides how long it is kept.
public enum BackupKind: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, onDemand, nightly, weekly, monthly, uploaded
    public var description: String { ["unspecified", "on-demand", "nightly", "weekly", "monthly", "uploaded"][Int(rawValue)] }
}

public enum JobKind: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, backup, restore, archive, uploadValidation, expiry, verify
    public var description: String {
        ["unspecified", "backup", "restore", "archive", "upload-validation", "expiry", "verify"][Int(rawValue)]
    }

    /// Whether a job of this kind works on its environment's database or
    /// files, and so waits for its environment's other jobs. Preparing an
    /// archive, validating an upload and verifying a backup touch only the
    /// blob store and the catalog (the catalog's unique index of migration
    /// 10 says the same).
    public var usesEnvironment: Bool { self != .archive && self != .uploadValidation && self != .verify }
}

public enum JobStatus: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, queued, running, finished, failed, cancelled
    public var description: String { ["unspecified", "queued", "running", "finished", "failed", "cancelled"][Int(rawValue)] }
    public var isTerminal: Bool { successors.isEmpty }

    /// A job's lifecycle, the one place it is written down: queued, then
    /// running, then finished, failed or cancelled; a queued job may also
    /// fail or be cancelled without running. The catalog's SQL guards are
    /// made from it (`predecessors`), so no update can skip a step.
    public var successors: [JobStatus] {
        switch self {
        case .queued: [.running, .failed, .cancelled]
        case .running: [.finished, .failed, .cancelled]
        case .unspecified, .finished, .failed, .cancelled: []
        }
    }

    /// The statuses a job may come to this one from.
    public var predecessors: [JobStatus] { Self.allCases.filter { $0.successors.contains(self) } }

    /// The statuses of a job that has not ended: it holds its environment.
    public static let active: [JobStatus] = allCases.filter { !$0.successors.isEmpty }
}

/// An upload's life: chunks arrive while RECEIVING; FinishUpload starts its
/// validation; it ends FINISHED (a new backup), FAILED, EXPIRED or ABANDONED.
public enum UploadState: Int32, WireEnum, CustomStringConvertible {
    case unspecified = 0, receiving, validating, finished, failed, expired, abandoned
    public var description: String {
        ["unspecified", "receiving", "validating", "finished", "failed", "expired", "abandoned"][Int(rawValue)]
    }

    /// An upload's lifecycle, the one place it is written down: receiving,
    /// then validating (finished) or failed (a wrong hash), expired (silent
    /// for its lifetime) or abandoned; a validation ends finished or failed.
    /// The catalog's SQL guards are made from it.
    public var successors: [UploadState] {
        switch self {
        case .receiving: [.validating, .failed, .expired, .abandoned]
        case .validating: [.finished, .failed]
        case .unspecified, .finished, .failed, .expired, .abandoned: []
        }
    }

    /// The states an upload may come to this one from.
    public var predecessors: [UploadState] { Self.allCases.filter { $0.successors.contains(self) } }

    /// The states of an upload that has not ended: it holds its spool file and its reservation.
    public static let unfinished: [UploadState] = allCases.filter { !$0.successors.isEmpty }
}

extension WireEnum where Self: CustomStringConvertible {
    /// The case whose description is `name` (case-insensitive); how the
    /// catalog stores enums and how the CLI takes them.
    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.description == name.lowercased() }) else { return nil }
        self = match
    }
}
