import ArgumentParser
import BackupClient
import BackupRules
import BackupStorage
import BackupWire
import Foundation
import Synchronization

struct UploadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload", abstract: "Upload a snapshot archive (.tar.gz) made elsewhere as a new backup, or give an upload up.",
        subcommands: [SendUpload.self, AbandonUpload.self], defaultSubcommand: SendUpload.self)
}

struct AbandonUpload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "abandon", abstract: "Give up an upload still receiving: its data is removed and its reservation freed at once.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Upload ID.") var id: String

    func run() async throws {
        let id = id
        let upload = try await global.withClient { try await $0.unary(Backups.abandonUpload, .with { $0.uploadID = id }) }
        global.output(upload, human: { "upload \($0.id): \($0.state)" + ($0.error.isEmpty ? "" : " (\($0.error))") })
    }
}

struct SendUpload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Upload a snapshot archive (.tar.gz) made elsewhere, or downloaded earlier, as a new backup (the default).",
        discussion: """
            Hashes FILE, starts an upload into the environment, sends the file in chunks with a progress bar, \
            and waits while the server checks it as a full snapshot; prints the new backup's id. A dropped \
            connection is retried with back-off, going on from what the server has received. An upload \
            interrupted for longer can be continued with --resume ID and the same FILE, until it expires.
            """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "The archive: .metadata, db/db.backup and tree/xx/yy/KEY in a gzip-compressed tar.") var file: String
    @Option(help: "Environment to upload into, NAMESPACE/NAME.") var env: EnvironmentRef?
    @Option(help: "Comment for the new backup.") var comment = ""
    @Option(help: "Continue the upload with this ID, started earlier from the same FILE.") var resume: String?
    @Option(help: "Reconnections after a dropped connection, without progress in between, before giving up.") var retries = 8

    func validate() throws {
        guard (env == nil) != (resume == nil) else { throw ValidationError("give --env for a new upload, or --resume ID") }
        guard retries >= 0 else { throw ValidationError("--retries may not be negative") }
    }

    func run() async throws {
        let (size, sha256) = try hash(file)
        let (file, env, comment, resume, global) = (file, env, comment, resume, global)
        let settings = try global.settings()
        let retrying = Retrying(attempts: retries)
        let upload = try await global.reportingErrors {
            var upload: Upload
            if let resume {
                upload = try await retrying.run(settings) { try await $0.unary(Backups.getUpload, .with { $0.uploadID = resume }) }
                guard upload.sizeBytes == size, upload.sha256 == sha256.hex else {
                    throw ValidationError("upload \(resume) is of a file of \(upload.sizeBytes) bytes with SHA-256 \(upload.sha256); "
                                          + "\(file) is \(size) bytes with SHA-256 \(sha256.hex)")
                }
            } else {
                // Not retried: a start whose answer was lost would leave a second upload.
                upload = try await BackupClient.withConnection(settings) { client in
                    try await client.unary(Backups.startUpload, .with {
                        $0.namespace = env!.namespace; $0.environment = env!.name; $0.comment = comment
                        $0.filename = URL(fileURLWithPath: file).lastPathComponent; $0.sizeBytes = size; $0.sha256 = sha256.hex
                    })
                }
            }
            let id = upload.id
            if upload.state == .receiving {
                if !global.json { printError("upload \(id): sending \(Format.bytes(size))") }
                let sent = Progress()
                try await retrying.run(settings, progress: sent) { client in
                    try await send(file, upload: id, client: client, quiet: global.json, sent: sent)
                }
                upload = try await retrying.run(settings) { try await $0.unary(Backups.finishUpload, .with { $0.uploadID = id }) }
            }
            let jobID = upload.jobID
            if !jobID.isEmpty { _ = try await retrying.run(settings) { try await follow(jobID, client: $0, quiet: global.json) } }
            upload = try await retrying.run(settings) { try await $0.unary(Backups.getUpload, .with { $0.uploadID = id }) }
            guard upload.state == .finished else {
                throw RPCError(upload.state == .failed ? .invalidArgument : .failedPrecondition,
                               "upload \(id) is \(upload.state)" + (upload.error.isEmpty ? "" : ": \(upload.error)"))
            }
            return upload
        }
        global.output(upload) { "uploaded \(file) as backup \($0.backupID) of \($0.namespace)/\($0.environment)" }
    }

    /// The file's size and SHA-256, with a progress bar on a terminal.
    private func hash(_ path: String) throws -> (UInt64, ContentHash) {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ValidationError("cannot read \(path)") }
        defer { try? handle.close() }
        let size = try handle.seekToEnd()
        guard size > 0 else { throw ValidationError("\(path) is empty") }
        try handle.seek(toOffset: 0)
        let bar = ProgressBar(quiet: global.json)
        defer { bar.finish() }
        bar.start(from: 0)
        let hasher = SHA256Hasher()
        var done: UInt64 = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            chunk.withUnsafeBytes { hasher.update($0) }
            done += UInt64(chunk.count)
            bar.draw(transferred: done, of: size)
        }
        return (size, hasher.finish())
    }
}

/// Sends an upload's chunks from where the server says it stands to the
/// end, each read from the file as the connection takes the one before.
private func send(_ path: String, upload id: String, client: BackupClient, quiet: Bool, sent: Progress) async throws {
    let upload = try await client.unary(Backups.getUpload, .with { $0.uploadID = id })
    guard upload.state == .receiving, upload.bytesReceived < upload.sizeBytes else { return }
    let info = try await client.unary(Backups.serverInfo, ServerInfoRequest())
    // A chunk and its framing fit in one frame.
    let chunkBytes = max(1, min(4 << 20, Int(info.maxFrameBytes) - 1024))
    guard let handle = FileHandle(forReadingAtPath: path) else { throw ValidationError("cannot read \(path)") }
    defer { try? handle.close() }
    try handle.seek(toOffset: upload.bytesReceived)
    let bar = ProgressBar(quiet: quiet)
    defer { bar.finish() }
    bar.start(from: upload.bytesReceived)
    var offset = upload.bytesReceived
    _ = try await client.clientStreaming(Backups.uploadChunks) { sendChunk in
        while offset < upload.sizeBytes {
            guard let data = try handle.read(upToCount: Int(min(UInt64(chunkBytes), upload.sizeBytes - offset))), !data.isEmpty else {
                throw ValidationError("\(path) ended at \(offset) bytes, before the \(upload.sizeBytes) the upload announced")
            }
            try await sendChunk(.with { $0.uploadID = id; $0.offset = offset; $0.data = Array(data) })
            offset += UInt64(data.count)
            sent.reached(offset)
            bar.draw(transferred: offset, of: upload.sizeBytes)
        }
    }
}

/// Runs a step of an upload on a fresh connection, again after a failure
/// that a new connection may mend (the connection dropped, the server was
/// busy or restarting, another call still held the upload), waiting 1, 2,
/// 4 … up to 30 seconds between tries. A try that got further (by its
/// `progress`) resets the count, so a long upload over a flaky link goes
/// on as long as it makes progress.
private struct Retrying: Sendable {
    let attempts: Int

    static let retried: Set<StatusCode> = [.unavailable, .aborted, .deadlineExceeded, .resourceExhausted, .outOfRange]

    func run<T: Sendable>(_ settings: ClientSettings, progress: Progress? = nil,
                          _ step: @escaping @Sendable (BackupClient) async throws -> T) async throws -> T {
        var failures = 0
        var reached = progress?.bytes ?? 0
        while true {
            do {
                return try await BackupClient.withConnection(settings, step)
            } catch let error as RPCError where Self.retried.contains(error.code) && failures < attempts {
                if let progress, progress.bytes > reached { (failures, reached) = (0, progress.bytes) }
                failures += 1
                let wait = min(30, 1 << (failures - 1))
                printError("\(error.code): \(error.message); trying again in \(wait) s (\(failures) of \(attempts))")
                try await Task.sleep(for: .seconds(wait))
            }
        }
    }
}

/// How far a step has come, across its tries.
private final class Progress: Sendable {
    private let reachedBytes = Mutex<UInt64>(0)
    var bytes: UInt64 { reachedBytes.withLock { $0 } }
    func reached(_ bytes: UInt64) { reachedBytes.withLock { $0 = max($0, bytes) } }
}
