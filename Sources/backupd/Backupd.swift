import ArgumentParser
import AsyncHTTPClient
import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import BackupWire
import CMalloc
import Foundation
import Logging
import NIOPosix
import NIOCore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The server executable: configuration and wiring only.
@main
struct Backupd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backupd",
        abstract: "Backup and restore for apps made of a PostgreSQL database and file documents.",
        version: "backupd \(BuildInfo.description)",
        subcommands: [Serve.self, ConfigCommand.self, TokenCommand.self, KeysCommand.self, StoreCommand.self, ReloadCommand.self],
        defaultSubcommand: Serve.self)

    /// Parses the command line with the settings it leaves out taken from
    /// the environment and the configuration file, then runs the command.
    static func main() async {
        let layered: LayeredArguments
        do {
            layered = try LayeredArguments.resolving(Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
        } catch {
            FileHandle.standardError.write(Data("Error: \(error)\n".utf8))
            exit(withError: ExitCode.validationFailure)
        }
        do {
            var command = try parseAsRoot(layered.arguments)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            // A value ArgumentParser refuses may have come from a variable or the file: say which.
            if let origins = layered.origins(namedIn: fullMessage(for: error)) {
                FileHandle.standardError.write(Data("\(fullMessage(for: error))\n(\(origins))\n".utf8))
                exit(withError: ExitCode(exitCode(for: error).rawValue))
            }
            exit(withError: error)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve the RPC API over TLS and run backup jobs.",
        discussion: """
            Every option is also the variable BACKUPD_ and its name in capitals (BACKUPD_MAX_JOBS=4), and a key of the \
            YAML file --config names (max-jobs: 4). An option beats its variable, which beats the file. \
            `backupd config check` shows what serve would run with.
            """)

    @OptionGroup var options: ServeOptions

    /// Raises the open-descriptor limit to its hard limit and returns how
    /// many connections fit under it, keeping a reserve for the catalog,
    /// jobs, their tools and files.
    static func descriptorsForConnections(reserve: Int = 256) -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return reserve }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return max(16, Int(clamping: limit.rlim_cur) - reserve)
    }

    func run() async throws {
        // What backupd writes (blobs, scratch files) is its own; restored files get their store's owner and mode explicitly.
        umask(0o077)
        // Buffers of a MiB and more (object-store parts and ranges, upload chunks) are mapped and unmapped whole. By
        // default glibc raises this threshold to the largest buffer freed, after which 8 MiB parts come from per-thread
        // arenas that keep them: a 1 GiB upload through S3 grew the server by 217 MiB so, by 50 MiB with it fixed.
        // MALLOC_MMAP_THRESHOLD_ in the environment still wins.
        if ProcessInfo.processInfo.environment["MALLOC_MMAP_THRESHOLD_"] == nil { mallopt(M_MMAP_THRESHOLD, 1 << 20) }
        // From here on no PG* variable of backupd's can reach an app database or pg_dump.
        let catalogURL = try ConnectionString.absorbingEnvironment(options.catalog.catalog)
        let level = Logger.Level(rawValue: options.operations.logLevel)!
        let json = options.operations.logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var configuration = try options.serverConfiguration(descriptorsForConnections: Self.descriptorsForConnections())
        let readyFile = ReadyFile(path: options.operations.readyFile, admin: configuration.admin != nil)
        configuration.admin?.onListening = { readyFile.bound($0, admin: true) }
        let logger = Logger(label: "backupd")
        if let keys = configuration.storageKeys {
            logger.info("new content is kept encrypted per namespace", metadata: ["master_key_in_use": "\(keys.file.current.id)"])
        } else {
            logger.warning("no --storage-keys: backups are kept unencrypted, readable by anyone with the blob store")
        }
        let maxJobs = options.jobs.maxJobs
        // The catalog's libpq calls have threads of their own, one per connection (the pool's, the job-change
        // listener's and each running job's blob lock), so bulk work of jobs (hashing files, copying blobs)
        // never queues a call's authentication.
        let catalogThreads = NIOThreadPool(numberOfThreads: Self.catalogConnections + 1 + maxJobs)
        let jobThreads = NIOThreadPool(numberOfThreads: 16)
        catalogThreads.start()
        jobThreads.start()
        defer {
            catalogThreads.shutdownGracefully { _ in }
            jobThreads.shutdownGracefully { _ in }
        }
        // The object store's settings are checked before its HTTP client exists: once made, it must be shut down.
        let objectStore = try options.blobStore.objectStore()
        let objectStoreHTTP = options.blobStore.objectStoreHTTP(objectStore)
        do {
            let blobStore = try options.blobStore.makeBlobStore(objectStore, http: objectStoreHTTP)
            let metrics = ServiceMetrics()
            let catalog = Catalog(connectionString: catalogURL, maximumConnections: Self.catalogConnections, threadPool: catalogThreads,
                                  observer: metrics)
            try await catalog.migrate()
            let server = try await BackupServer(
                configuration: configuration,
                transports: [TLSTransport(host: configuration.host, port: configuration.port, eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
                                          tls: options.listener.tls)],
                catalog: catalog, blobStore: blobStore, workDirectory: options.blobStore.blobDir, threadPool: jobThreads, metrics: metrics,
                logger: logger
            ) { address in
                readyFile.bound(address, admin: false)
            }
            var group = ServiceGroupConfiguration(services: [.init(service: server), .init(service: ReloadOnHangup(server: server))],
                                                  gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            // Past the jobs' grace period and a margin for recording how they ended, whatever still runs is cancelled.
            group.maximumGracefulShutdownDuration = .seconds(options.jobs.shutdownGraceSeconds) + Self.shutdownMargin
            try await ServiceGroup(configuration: group).run()
            await catalog.pool.close()
        } catch {
            try? await objectStoreHTTP?.shutdown()
            throw error
        }
        try? await objectStoreHTTP?.shutdown()
    }

    /// Connections (and threads) of the catalog pool.
    static let catalogConnections = 12
    /// How long a graceful shutdown may go on past the jobs' grace period.
    static let shutdownMargin: Duration = .seconds(15)
}

/// SIGHUP reloads the download keys and TLS files (`BackupServer.reload`), as systemd's `ExecReload` sends it.
private struct ReloadOnHangup: Service {
    let server: BackupServer

    func run() async {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in hangups {
                _ = try? await server.reload()  // it logs what it reloaded, or why not
            }
        }
    }
}

/// Asks a running backupd, through its admin listener, to reload its keys and certificates.
struct ReloadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reload",
        abstract: "Make a running backupd read its download keys, TLS certificate, key and client CA again (as SIGHUP does).")

    @Option(name: .customLong("admin"),
            help: "The server's admin listener, HOST:PORT (default: env BACKUPD_ADMIN_LISTEN, else 127.0.0.1:7444).")
    var adminOption: String?

    func run() async throws {
        let admin = adminOption ?? ProcessInfo.processInfo.environment["BACKUPD_ADMIN_LISTEN"] ?? "127.0.0.1:7444"
        var request = HTTPClientRequest(url: "http://\(admin)/reload")
        request.method = .POST
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        } catch {
            throw ValidationError("cannot reach backupd's admin listener at \(admin) (--admin, BACKUPD_ADMIN_LISTEN): \(error)")
        }
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard response.status == .ok else {
            FileHandle.standardError.write(Data(body.utf8))
            throw ExitCode(1)
        }
        print(body, terminator: "")
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage access tokens directly in the catalog (the server may be stopped).",
        subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a token and print its secret: the first admin token of a namespace, or a platform token.")

        @OptionGroup var catalogOptions: CatalogOptions
        @Option(help: "Namespace the token is bound to.") var namespace = ""
        @Option(help: "viewer, operator or admin.") var role = ""
        @Flag(help: "A platform token, for the service that places apps: it registers environments in any namespace.")
        var platform = false
        @Option(help: "Who or what uses the token.") var name = "admin"

        func validate() throws {
            if platform {
                guard namespace.isEmpty, role.isEmpty || role == "platform" else {
                    throw ValidationError("--platform takes no --namespace or --role: a platform token belongs to no namespace")
                }
            } else {
                guard !namespace.isEmpty else { throw ValidationError("--namespace is required (or --platform)") }
                guard let role = Role(name: role), role != .unspecified, role != .platform else {
                    throw ValidationError("--role must be viewer, operator or admin, not \"\(role)\" (use --platform for a platform token)")
                }
            }
        }

        func run() async throws {
            try await catalogOptions.withCatalog { catalog, _ in
                let secret = AccessTokenSecret()
                _ = try await catalog.createToken(namespace: namespace, role: platform ? .platform : Role(name: role)!, name: name,
                                                  secretDigest: secret.digest)
                print(secret.text)
            }
        }
    }
}

/// `--ready-file`: written once every listener is bound, the RPC address on
/// its first line (what scripts read) and the admin listener's on a second.
final class ReadyFile: Sendable {
    private let path: String?
    private let admin: Bool
    private let bound = Mutex<(rpc: String?, admin: String?)>((nil, nil))

    init(path: String?, admin: Bool) {
        self.path = path
        self.admin = admin
    }

    func bound(_ address: SocketAddress, admin isAdmin: Bool) {
        guard let path, let ip = address.ipAddress, let port = address.port else { return }
        let text = (ip.contains(":") ? "[\(ip)]" : ip) + ":\(port)"
        let lines: String? = bound.withLock { bound in
            if isAdmin { bound.admin = text } else { bound.rpc = text }
            guard let rpc = bound.rpc, !admin || bound.admin != nil else { return nil }
            return "\(rpc)\n" + (bound.admin.map { "admin \($0)\n" } ?? "")
        }
        if let lines { try? lines.write(toFile: path, atomically: true, encoding: .utf8) }
    }
}
