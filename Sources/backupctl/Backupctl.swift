import ArgumentParser
import BackupClient
import BackupWire
import Foundation

@main
struct Backupctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backupctl",
        abstract: "Back up, list and manage app environments on a backupd server.",
        version: "backupctl \(BuildInfo.description)",
        subcommands: [Info.self, EnvCommand.self, Create.self, List.self, Show.self, Comment.self, Delete.self,
                      Verify.self, Restore.self, DownloadCommand.self, UploadCommand.self, JobCommand.self, ScheduleCommand.self, ActivityCommand.self,
                      TokenCommand.self])
}

struct Info: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the server's version and who you are.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        let info = try await global.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
        global.output(info) { i in
            Format.fields([("server", "backupd \(i.version)"), ("protocol", i.protocol), ("catalog", "PostgreSQL \(i.catalogPostgresVersion)"),
                           ("max frame", Format.bytes(UInt64(i.maxFrameBytes))),
                           ("connections", "\(i.maxOpenCalls) calls open at once; handshake \(i.handshakeTimeoutMS / 1000) s, "
                                + "a frame \(i.partialFrameTimeoutMS / 1000) s, idle \(i.idleConnectionTimeoutMS / 1000) s, "
                                + "first authenticated call \(i.authenticationTimeoutMS / 1000) s"),
                           ("you", "\(i.callerTokenName) (\(i.callerRole)" + (i.callerNamespace.isEmpty ? ")" : " in \(i.callerNamespace))"))])
        }
    }
}

struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Back up an environment now.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Environment, NAMESPACE/NAME.") var env: EnvironmentRef
    @Option(help: "A comment to keep with the backup.") var comment = ""
    @Flag(help: "Wait for the backup to finish, with a progress bar on a terminal.") var wait = false

    func run() async throws {
        let (env, comment, wait, global) = (env, comment, wait, global)
        let backup = try await global.withClient { client in
            let created = try await client.unary(Backups.createBackup, .with {
                $0.namespace = env.namespace; $0.environment = env.name; $0.comment = comment
            })
            guard wait else { return created.backup }
            try await follow(created.job.id, client: client, quiet: global.json)
            return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
        }
        global.output(backup, human: Format.backup)
        if backup.status == .failed { throw ExitCode(1) }
    }
}

/// Streams a job's progress until it ends, drawing a bar unless quiet;
/// returns the job as it ended.
@discardableResult
func follow(_ jobID: String, client: BackupClient, quiet: Bool) async throws -> Job {
    let bar = ProgressBar(quiet: quiet)
    defer { bar.finish() }
    var last = Job()
    try await client.serverStreaming(Backups.watchJob, .with { $0.id = jobID }) { job in
        last = job
        bar.draw(job)
    }
    return last
}

struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List backups, newest first.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Only this environment, NAMESPACE/NAME.") var env: EnvironmentRef?
    @Option(help: "Every environment of this namespace.") var namespace: String?
    @Option(help: "Only this kind: on-demand, nightly, weekly, monthly, uploaded.") var kind: BackupKind?
    @Option(help: "Only this status: processing, failed, finished.") var status: BackupStatus?
    @Option(help: "At most this many.") var limit = 100

    func validate() throws {
        guard (env == nil) != (namespace == nil) else { throw ValidationError("give --env or --namespace") }
    }

    func run() async throws {
        let (env, namespace, kind, status, limit) = (env, namespace, kind, status, limit)
        let response = try await global.withClient { client in
            let (backups, next) = try await collectPages(limit: limit) { pageSize, pageToken in
                let page = try await client.unary(Backups.listBackups, .with {
                    $0.namespace = env?.namespace ?? namespace ?? ""; $0.environment = env?.name ?? ""
                    $0.kind = kind ?? .unspecified; $0.status = status ?? .unspecified
                    $0.pageSize = pageSize; $0.pageToken = pageToken
                })
                return (page.backups, page.nextPageToken)
            }
            return ListBackupsResponse.with { $0.backups = backups; $0.nextPageToken = next }
        }
        global.output(response) { Format.backups($0.backups) }
    }
}

struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show every detail of a backup.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup (snapshot) ID.") var id: String

    func run() async throws {
        let id = id
        let backup = try await global.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = id }) }
        global.output(backup, human: Format.backup)
    }
}

struct Comment: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set a backup's comment.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup ID.") var id: String
    @Argument(help: "The new comment.") var text: String

    func run() async throws {
        let (id, text) = (id, text)
        let backup = try await global.withClient { try await $0.unary(Backups.updateBackup, .with { $0.id = id; $0.comment = text }) }
        global.output(backup, human: Format.backup)
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a backup.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup ID.") var id: String

    func run() async throws {
        let id = id
        let response = try await global.withClient { try await $0.unary(Backups.deleteBackup, .with { $0.id = id }) }
        global.output(response) { _ in "deleted backup \(id)" }
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a backup into a stopped environment of its namespace.",
        discussion: """
            The target is rebuilt beside itself and swapped in only when complete; a failed restore leaves it as it was. \
            Its previous database and files are kept (NAME_prerestore, FILESTORE.prerestore) until the next restore.
            """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup ID.") var id: String
    @Option(help: "Target environment: NAME in the backup's namespace, or NAMESPACE/NAME.") var to: String
    @Flag(help: "Restore the database only; leave the files as they are.") var databaseOnly = false
    @Flag(help: "Restore even though the backup was made with another package version.") var acceptVersionMismatch = false
    @Flag(help: "Wait for the restore to end, with a progress bar on a terminal.") var wait = false

    func run() async throws {
        let (id, to, databaseOnly, accept, wait, global) = (id, to, databaseOnly, acceptVersionMismatch, wait, global)
        let outcome: Result<Job, ExitCode> = try await global.withClient { client in
            let backup = try await client.unary(Backups.getBackup, .with { $0.id = id })
            let target = EnvironmentRef(argument: to) ?? EnvironmentRef(argument: "\(backup.namespace)/\(to)")
            guard let target else { throw ValidationError("--to \"\(to)\" is not NAME or NAMESPACE/NAME") }
            if !accept, target.namespace == backup.namespace {
                let environment = try await client.unary(Backups.getEnvironment, .with { $0.namespace = target.namespace; $0.name = target.name })
                if environment.packageVersion != backup.packageVersion {
                    printError("""
                        warning: backup \(id) was made with package version \(backup.packageVersion.isEmpty ? "(none)" : backup.packageVersion), \
                        \(target.namespace)/\(target.name) runs \(environment.packageVersion.isEmpty ? "(none)" : environment.packageVersion).
                        Restore anyway with --accept-version-mismatch.
                        """)
                    return .failure(ExitCode(2))
                }
            }
            let job = try await client.unary(Backups.restoreBackup, .with {
                $0.backupID = id; $0.targetNamespace = target.namespace; $0.targetEnvironment = target.name
                $0.databaseOnly = databaseOnly; $0.acceptVersionMismatch = accept
            })
            guard wait else { return .success(job) }
            return .success(try await follow(job.id, client: client, quiet: global.json))
        }
        let job = try outcome.get()
        global.output(job, human: Format.job)
        if job.status == .failed { throw ExitCode(1) }
    }
}

struct JobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "job", abstract: "Show a job, follow it, or cancel it.",
        subcommands: [ShowJob.self, CancelJob.self], defaultSubcommand: ShowJob.self)
}

struct ShowJob: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a job; --wait follows it to its end.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Job ID.") var id: String
    @Flag(help: "Follow the job's progress until it ends.") var wait = false

    func run() async throws {
        let (id, wait, global) = (id, wait, global)
        let job = try await global.withClient { client in
            wait ? try await follow(id, client: client, quiet: global.json) : try await client.unary(Backups.getJob, .with { $0.id = id })
        }
        global.output(job, human: Format.job)
        if job.status == .failed { throw ExitCode(1) }
    }
}

struct CancelJob: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Stop a queued or running job: its tools are killed, what it made is removed, its target stays as it was.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Job ID.") var id: String
    @Flag(help: "Wait until the job has stopped.") var wait = false

    func run() async throws {
        let (id, wait, global) = (id, wait, global)
        let job = try await global.withClient { client in
            let job = try await client.unary(Backups.cancelJob, .with { $0.id = id })
            return wait ? try await follow(id, client: client, quiet: global.json) : job
        }
        global.output(job, human: Format.job)
    }
}

struct ActivityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "activity", abstract: "Show an environment's activity log, newest first.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "Environment, NAMESPACE/NAME.") var env: EnvironmentRef
    @Option(help: "At most this many entries.") var limit = 50

    func run() async throws {
        let (env, limit) = (env, limit)
        let response = try await global.withClient { client in
            let (activity, next) = try await collectPages(limit: limit) { pageSize, pageToken in
                let page = try await client.unary(Backups.listActivity, .with {
                    $0.namespace = env.namespace; $0.environment = env.name; $0.pageSize = pageSize; $0.pageToken = pageToken
                })
                return (page.activity, page.nextPageToken)
            }
            return ListActivityResponse.with { $0.activity = activity; $0.nextPageToken = next }
        }
        global.output(response) { r in
            Format.table(["TIME", "ACTION", "OUTCOME", "BY", "BACKUP", "DETAIL"], r.activity.map {
                [Format.time($0.atUnixMS), $0.action, $0.outcome, $0.actor, $0.backupID, $0.detail]
            })
        }
    }
}
