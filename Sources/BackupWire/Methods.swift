/// How many messages each side sends on a call.
public enum CallShape: Sendable {
    case unary            // one request, one response
    case clientStreaming  // many requests, one response
    case serverStreaming  // one request, many responses
}

/// One method of the API, typed by its request and response messages, so that
/// server routing and client stubs are checked against the same table.
public struct Method<Request: WireMessage, Response: WireMessage>: Sendable {
    public let name: String
    public let shape: CallShape

    init(_ shortName: String, _ shape: CallShape = .unary) {
        self.name = "\(Backups.serviceName)/\(shortName)"
        self.shape = shape
    }
}

/// The methods of service `backup.v1.Backups`, as in Protos/backup.proto.
public enum Backups {
    public static let serviceName = "backup.v1.Backups"

    public static let serverInfo = Method<ServerInfoRequest, ServerInfoResponse>("ServerInfo")

    public static let registerEnvironment = Method<RegisterEnvironmentRequest, Environment>("RegisterEnvironment")
    public static let listEnvironments = Method<ListEnvironmentsRequest, ListEnvironmentsResponse>("ListEnvironments")
    public static let getEnvironment = Method<GetEnvironmentRequest, Environment>("GetEnvironment")
    public static let updateEnvironment = Method<UpdateEnvironmentRequest, Environment>("UpdateEnvironment")
    public static let deleteEnvironment = Method<DeleteEnvironmentRequest, DeleteEnvironmentResponse>("DeleteEnvironment")
    public static let setEnvironmentState = Method<SetEnvironmentStateRequest, Environment>("SetEnvironmentState")

    public static let createBackup = Method<CreateBackupRequest, CreateBackupResponse>("CreateBackup")
    public static let listBackups = Method<ListBackupsRequest, ListBackupsResponse>("ListBackups")
    public static let getBackup = Method<GetBackupRequest, Backup>("GetBackup")
    public static let updateBackup = Method<UpdateBackupRequest, Backup>("UpdateBackup")
    public static let deleteBackup = Method<DeleteBackupRequest, DeleteBackupResponse>("DeleteBackup")
    public static let verifyBackup = Method<VerifyBackupRequest, Job>("VerifyBackup")

    public static let getJob = Method<GetJobRequest, Job>("GetJob")
    public static let watchJob = Method<WatchJobRequest, Job>("WatchJob", .serverStreaming)
    public static let cancelJob = Method<CancelJobRequest, Job>("CancelJob")

    public static let restoreBackup = Method<RestoreBackupRequest, Job>("RestoreBackup")
    public static let listActivity = Method<ListActivityRequest, ListActivityResponse>("ListActivity")

    public static let requestDownload = Method<RequestDownloadRequest, Download>("RequestDownload")
    public static let getDownload = Method<GetDownloadRequest, Download>("GetDownload")

    public static let startUpload = Method<StartUploadRequest, Upload>("StartUpload")
    public static let uploadChunks = Method<UploadChunk, Upload>("UploadChunks", .clientStreaming)
    public static let finishUpload = Method<FinishUploadRequest, Upload>("FinishUpload")
    public static let getUpload = Method<GetUploadRequest, Upload>("GetUpload")
    public static let abandonUpload = Method<AbandonUploadRequest, Upload>("AbandonUpload")

    public static let getSchedule = Method<GetScheduleRequest, Schedule>("GetSchedule")
    public static let setSchedule = Method<SetScheduleRequest, Schedule>("SetSchedule")

    public static let createToken = Method<CreateTokenRequest, CreateTokenResponse>("CreateToken")
    public static let revokeToken = Method<RevokeTokenRequest, Token>("RevokeToken")
    public static let listTokens = Method<ListTokensRequest, ListTokensResponse>("ListTokens")
}
