import BackupProto

// Requests and responses of the `backup.v1.Backups` methods, one struct per
// message of Protos/backup.proto, in the same order.

public struct ServerInfoRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__server_info_request__descriptor }
    public init() {}
    public mutating func map(_ f: inout FieldMap) {}
}

public struct ServerInfoResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__server_info_response__descriptor }
    public var version = ""
    public var `protocol` = ""
    public var catalogPostgresVersion = ""
    public var serverTimeUnixMS: Int64 = 0
    public var maxFrameBytes: UInt32 = 0
    public var callerNamespace = ""
    public var callerRole: Role = .unspecified
    public var callerTokenName = ""
    public var maxOpenCalls: UInt32 = 0
    public var handshakeTimeoutMS: UInt32 = 0
    public var partialFrameTimeoutMS: UInt32 = 0
    public var idleConnectionTimeoutMS: UInt32 = 0
    public var authenticationTimeoutMS: UInt32 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &version); f.field(2, &`protocol`); f.field(3, &catalogPostgresVersion); f.field(4, &serverTimeUnixMS)
        f.field(5, &maxFrameBytes); f.field(6, &callerNamespace); f.field(7, &callerRole); f.field(8, &callerTokenName)
        f.field(9, &maxOpenCalls); f.field(10, &handshakeTimeoutMS); f.field(11, &partialFrameTimeoutMS)
        f.field(12, &idleConnectionTimeoutMS); f.field(13, &authenticationTimeoutMS)
    }
}

public struct RegisterEnvironmentRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__register_environment_request__descriptor }
    public var namespace = ""
    public var name = ""
    public var app = ""
    public var databaseURL = ""
    public var fileStorePath = ""
    public var fileQuery = ""
    public var packageVersion = ""
    public var state: EnvironmentState = .unspecified
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &name); f.field(3, &app); f.field(4, &databaseURL)
        f.field(5, &fileStorePath); f.field(6, &fileQuery); f.field(7, &packageVersion); f.field(8, &state)
    }
}

public struct ListEnvironmentsRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_environments_request__descriptor }
    public var namespace = ""
    public var pageSize: UInt32 = 0
    public var pageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &pageSize); f.field(3, &pageToken) }
}

public struct ListEnvironmentsResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_environments_response__descriptor }
    public var environments: [Environment] = []
    public var nextPageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &environments); f.field(2, &nextPageToken) }
}

public struct GetEnvironmentRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_environment_request__descriptor }
    public var namespace = ""
    public var name = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &name) }
}

/// Empty fields are left as they are.
public struct UpdateEnvironmentRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__update_environment_request__descriptor }
    public var namespace = ""
    public var name = ""
    public var app = ""
    public var databaseURL = ""
    public var fileStorePath = ""
    public var fileQuery = ""
    public var packageVersion = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &name); f.field(3, &app); f.field(4, &databaseURL)
        f.field(5, &fileStorePath); f.field(6, &fileQuery); f.field(7, &packageVersion)
    }
}

public struct DeleteEnvironmentRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__delete_environment_request__descriptor }
    public var namespace = ""
    public var name = ""
    public var force = false
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &name); f.field(3, &force) }
}

public struct DeleteEnvironmentResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__delete_environment_response__descriptor }
    public var deletedBackups: UInt32 = 0
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &deletedBackups) }
}

public struct SetEnvironmentStateRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__set_environment_state_request__descriptor }
    public var namespace = ""
    public var name = ""
    public var state: EnvironmentState = .unspecified
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &name); f.field(3, &state) }
}

public struct CreateBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__create_backup_request__descriptor }
    public var namespace = ""
    public var environment = ""
    public var comment = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &environment); f.field(3, &comment) }
}

public struct CreateBackupResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__create_backup_response__descriptor }
    public var backup = Backup()
    public var job = Job()
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &backup); f.field(2, &job) }
}

public struct ListBackupsRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_backups_request__descriptor }
    public var namespace = ""
    public var environment = ""
    public var kind: BackupKind = .unspecified
    public var status: BackupStatus = .unspecified
    public var pageSize: UInt32 = 0
    public var pageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &environment); f.field(3, &kind); f.field(4, &status)
        f.field(5, &pageSize); f.field(6, &pageToken)
    }
}

public struct ListBackupsResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_backups_response__descriptor }
    public var backups: [Backup] = []
    public var nextPageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &backups); f.field(2, &nextPageToken) }
}

public struct GetBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_backup_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct UpdateBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__update_backup_request__descriptor }
    public var id = ""
    public var comment = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id); f.field(2, &comment) }
}

public struct DeleteBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__delete_backup_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct DeleteBackupResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__delete_backup_response__descriptor }
    public init() {}
    public mutating func map(_ f: inout FieldMap) {}
}

public struct VerifyBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__verify_backup_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct GetJobRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_job_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct CancelJobRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__cancel_job_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct WatchJobRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__watch_job_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct RestoreBackupRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__restore_backup_request__descriptor }
    public var backupID = ""
    public var targetNamespace = ""
    public var targetEnvironment = ""
    public var databaseOnly = false
    public var acceptVersionMismatch = false
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &backupID); f.field(2, &targetNamespace); f.field(3, &targetEnvironment)
        f.field(4, &databaseOnly); f.field(5, &acceptVersionMismatch)
    }
}

public struct ListActivityRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_activity_request__descriptor }
    public var namespace = ""
    public var environment = ""
    public var pageSize: UInt32 = 0
    public var pageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &environment); f.field(3, &pageSize); f.field(4, &pageToken)
    }
}

public struct ListActivityResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_activity_response__descriptor }
    public var activity: [Activity] = []
    public var nextPageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &activity); f.field(2, &nextPageToken) }
}

public struct RequestDownloadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__request_download_request__descriptor }
    public var backupID = ""
    public var databaseOnly = false
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &backupID); f.field(2, &databaseOnly) }
}

public struct GetDownloadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_download_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct StartUploadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__start_upload_request__descriptor }
    public var namespace = ""
    public var environment = ""
    public var filename = ""
    public var sizeBytes: UInt64 = 0
    public var sha256 = ""
    public var comment = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &namespace); f.field(2, &environment); f.field(3, &filename); f.field(4, &sizeBytes)
        f.field(5, &sha256); f.field(6, &comment)
    }
}

public struct UploadChunk: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__upload_chunk__descriptor }
    public var uploadID = ""
    public var offset: UInt64 = 0
    public var data: [UInt8] = []
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &uploadID); f.field(2, &offset); f.field(3, &data) }
}

public struct FinishUploadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__finish_upload_request__descriptor }
    public var uploadID = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &uploadID) }
}

public struct GetUploadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_upload_request__descriptor }
    public var uploadID = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &uploadID) }
}

public struct AbandonUploadRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__abandon_upload_request__descriptor }
    public var uploadID = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &uploadID) }
}

public struct GetScheduleRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__get_schedule_request__descriptor }
    public var namespace = ""
    public var environment = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &environment) }
}

public struct SetScheduleRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__set_schedule_request__descriptor }
    public var schedule = Schedule()
    public var applyToExisting = false
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &schedule); f.field(2, &applyToExisting) }
}

public struct CreateTokenRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__create_token_request__descriptor }
    public var namespace = ""
    public var role: Role = .unspecified
    public var name = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &role); f.field(3, &name) }
}

public struct CreateTokenResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__create_token_response__descriptor }
    public var token = Token()
    public var secret = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &token); f.field(2, &secret) }
}

public struct RevokeTokenRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__revoke_token_request__descriptor }
    public var id = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &id) }
}

public struct ListTokensRequest: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_tokens_request__descriptor }
    public var namespace = ""
    public var pageSize: UInt32 = 0
    public var pageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &namespace); f.field(2, &pageSize); f.field(3, &pageToken) }
}

public struct ListTokensResponse: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__list_tokens_response__descriptor }
    public var tokens: [Token] = []
    public var nextPageToken = ""
    public init() {}
    public mutating func map(_ f: inout FieldMap) { f.field(1, &tokens); f.field(2, &nextPageToken) }
}
