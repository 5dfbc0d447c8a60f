import BackupProto

/// An app environment: a PostgreSQL database plus the folder of file
/// documents it refers to, named uniquely within its namespace.
public struct Environment: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__environment__descriptor }
    public var namespace = ""
    public var name = ""
    public var app = ""
    public var databaseURL = ""
    public var fileStorePath = ""
    public var fileQuery = ""
    public var packageVersion = ""
    public var state: EnvironmentState = .unspecified
    public var createdUnixMS: Int64 = 0
    public var backupCount: UInt32 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &name); f.field(3, &app); f.field(4, &databaseURL)
        f.field(5, &fileStorePath); f.field(6, &fileQuery); f.field(7, &packageVersion); f.field(8, &state)
        f.field(9, &createdUnixMS); f.field(10, &backupCount)
    }
}

/// A snapshot of an environment: its database dump and file documents.
public struct Backup: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__backup__descriptor }
    public var id = ""
    public var namespace = ""
    public var environment = ""
    public var status: BackupStatus = .unspecified
    public var kind: BackupKind = .unspecified
    public var comment = ""
    public var packageVersion = ""
    public var createdUnixMS: Int64 = 0
    public var finishedUnixMS: Int64 = 0
    public var expiresUnixMS: Int64 = 0
    public var sizeBytes: UInt64 = 0
    public var fileCount: UInt64 = 0
    public var databaseBytes: UInt64 = 0
    public var filesBytes: UInt64 = 0
    public var postgresVersion = ""
    public var error = ""
    public var jobID = ""
    public var dumpSHA256 = ""
    public var filesDeletedDuringBackup: UInt64 = 0
    public var filesChangedDuringBackup: UInt64 = 0
    public var warning = ""
    public var verification: Verification?
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &id); f.field(2, &namespace); f.field(3, &environment); f.field(4, &status); f.field(5, &kind)
        f.field(6, &comment); f.field(7, &packageVersion); f.field(8, &createdUnixMS); f.field(9, &finishedUnixMS)
        f.field(10, &expiresUnixMS); f.field(11, &sizeBytes); f.field(12, &fileCount); f.field(13, &databaseBytes)
        f.field(14, &filesBytes); f.field(15, &postgresVersion); f.field(16, &error); f.field(17, &jobID)
        f.field(18, &dumpSHA256); f.field(19, &filesDeletedDuringBackup); f.field(20, &filesChangedDuringBackup)
        f.field(21, &warning); f.field(22, &verification)
    }
}

/// What the last verification of a backup found.
public struct Verification: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__verification__descriptor }
    public var verifiedUnixMS: Int64 = 0
    public var jobID = ""
    public var intact = false
    public var problemCount: UInt32 = 0
    public var problems: [VerifyProblem] = []
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &verifiedUnixMS); f.field(2, &jobID); f.field(3, &intact); f.field(4, &problemCount); f.field(5, &problems)
    }
}

/// One piece of a backup that is missing or not what was stored.
public struct VerifyProblem: WireMessage, Codable {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__verify_problem__descriptor }
    public var name = ""
    public var sha256 = ""
    public var problem = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &name); f.field(2, &sha256); f.field(3, &problem) }
}

/// A unit of long work and its progress.
public struct Job: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__job__descriptor }
    public var id = ""
    public var kind: JobKind = .unspecified
    public var status: JobStatus = .unspecified
    public var namespace = ""
    public var environment = ""
    public var backupID = ""
    public var bytesDone: UInt64 = 0
    public var bytesTotal: UInt64 = 0
    public var phase = ""
    public var error = ""
    public var createdUnixMS: Int64 = 0
    public var startedUnixMS: Int64 = 0
    public var finishedUnixMS: Int64 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &id); f.field(2, &kind); f.field(3, &status); f.field(4, &namespace); f.field(5, &environment)
        f.field(6, &backupID); f.field(7, &bytesDone); f.field(8, &bytesTotal); f.field(9, &phase); f.field(10, &error)
        f.field(11, &createdUnixMS); f.field(12, &startedUnixMS); f.field(13, &finishedUnixMS)
    }
}

/// One line of an environment's activity log.
public struct Activity: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__activity__descriptor }
    public var atUnixMS: Int64 = 0
    public var namespace = ""
    public var environment = ""
    public var action = ""
    public var outcome = ""
    public var actor = ""
    public var backupID = ""
    public var detail = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &atUnixMS); f.field(2, &namespace); f.field(3, &environment); f.field(4, &action)
        f.field(5, &outcome); f.field(6, &actor); f.field(7, &backupID); f.field(8, &detail)
    }
}

/// An access token, bound to one namespace and one role.
public struct Token: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__token__descriptor }
    public var id = ""
    public var name = ""
    public var namespace = ""
    public var role: Role = .unspecified
    public var createdUnixMS: Int64 = 0
    public var revokedUnixMS: Int64 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &id); f.field(2, &name); f.field(3, &namespace); f.field(4, &role)
        f.field(5, &createdUnixMS); f.field(6, &revokedUnixMS)
    }
}

/// A prepared archive of a backup and its signed URL.
public struct Download: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__download__descriptor }
    public var id = ""
    public var backupID = ""
    public var databaseOnly = false
    public var jobID = ""
    public var ready = false
    public var url = ""
    public var filename = ""
    public var sizeBytes: UInt64 = 0
    public var urlExpiresUnixMS: Int64 = 0
    public var sha256 = ""
    public var error = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &id); f.field(2, &backupID); f.field(3, &databaseOnly); f.field(4, &jobID); f.field(5, &ready)
        f.field(6, &url); f.field(7, &filename); f.field(8, &sizeBytes); f.field(9, &urlExpiresUnixMS)
        f.field(10, &sha256); f.field(11, &error)
    }
}

/// An archive being uploaded, resumable from `bytesReceived`.
public struct Upload: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__upload__descriptor }
    public var id = ""
    public var namespace = ""
    public var environment = ""
    public var filename = ""
    public var sizeBytes: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var sha256 = ""
    public var jobID = ""
    public var backupID = ""
    public var error = ""
    public var state = UploadState.unspecified
    public var comment = ""
    public var createdUnixMS: Int64 = 0
    public var expiresUnixMS: Int64 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &id); f.field(2, &namespace); f.field(3, &environment); f.field(4, &filename); f.field(5, &sizeBytes)
        f.field(6, &bytesReceived); f.field(7, &sha256); f.field(8, &jobID); f.field(9, &backupID); f.field(10, &error)
        f.field(11, &state); f.field(12, &comment); f.field(13, &createdUnixMS); f.field(14, &expiresUnixMS)
    }
}

/// When automatic backups run and how long they are kept.
public struct Schedule: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__schedule__descriptor }
    public var namespace = ""
    public var environment = ""
    public var enabled = false
    public var windowStart = ""
    public var timeZone = ""
    public var retention = RetentionPolicy()
    public var verifyNightly = false
    public var backupsRedated: UInt32 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &environment); f.field(3, &enabled); f.field(4, &windowStart)
        f.field(5, &timeZone); f.field(6, &retention); f.field(7, &verifyNightly); f.field(8, &backupsRedated)
    }
}

public struct RetentionPolicy: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__retention_policy__descriptor }
    public var nightlyDays: UInt32 = 0
    public var weeklyMonths: UInt32 = 0
    public var monthlyMonths: UInt32 = 0
    public var onDemandDays: UInt32 = 0
    public var uploadedDays: UInt32 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &nightlyDays); f.field(2, &weeklyMonths); f.field(3, &monthlyMonths); f.field(4, &onDemandDays)
        f.field(5, &uploadedDays)
    }
}
