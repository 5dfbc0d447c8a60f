import ArgumentParser
import BackupCatalog
import BackupServer
import BackupWire
import Foundation
import Logging
import NIOPosix

/// The server executable: configuration and wiring only.
@main
struct Backupd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backupd",
        abstract: "Backup and restore for apps made of a PostgreSQL database and file documents.",
        subcommands: [Serve.self, TokenCommand.self],
        defaultSubcommand: Serve.self)
}

private func environment(_ name: String, _ fallback: String = "") -> String {
    ProcessInfo.processInfo.environment[name] ?? fallback
}

/// Options every subcommand that reaches the catalog shares.
struct CatalogOptions: ParsableArguments {
    @Option(help: "libpq connection string of the catalog database (env BACKUPD_CATALOG).")
    var catalog = environment("BACKUPD_CATALOG")

    func validate() throws {
        guard !catalog.isEmpty else { throw ValidationError("--catalog (or BACKUPD_CATALOG) is required") }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the RPC API over TLS and run backup jobs.")

    @OptionGroup var catalogOptions: CatalogOptions

    @Option(help: "Address to listen on, HOST:PORT; port 0 picks a free one (env BACKUPD_LISTEN).")
    var listen = environment("BACKUPD_LISTEN", "127.0.0.1:7443")

    @Option(help: "Folder of the blob store (env BACKUPD_BLOB_DIR).")
    var blobDir = environment("BACKUPD_BLOB_DIR")

    @Option(help: "PEM certificate chain of the server (env BACKUPD_TLS_CERT).")
    var cert = environment("BACKUPD_TLS_CERT")

    @Option(help: "PEM private key of the server (env BACKUPD_TLS_KEY).")
    var key = environment("BACKUPD_TLS_KEY")

    @Option(help: "Require client certificates signed by this CA (mutual TLS) (env BACKUPD_TLS_CLIENT_CA).")
    var clientCA = environment("BACKUPD_TLS_CLIENT_CA")

    @Option(help: "Largest frame accepted, in bytes.")
    var maxFrameBytes = defaultMaxFrameBytes

    @Option(help: "Jobs run at once by this process.")
    var maxJobs = 2

    @Option(help: "Seconds a job's lease lasts; a job whose process stops renewing it is failed after this.")
    var jobLeaseSeconds = 30

    @Option(help: "pg_dump to run (env BACKUPD_PG_DUMP).")
    var pgDump = environment("BACKUPD_PG_DUMP", "/usr/bin/pg_dump")

    @Option(help: "pg_restore to run (env BACKUPD_PG_RESTORE).")
    var pgRestore = environment("BACKUPD_PG_RESTORE", "/usr/bin/pg_restore")

    @Option(help: "Parallel workers of one pg_restore (default: the number of cores).")
    var restoreJobs = ProcessInfo.processInfo.activeProcessorCount

    @Flag(help: "Drop a restored environment's previous database and files at once, instead of keeping them until its next restore.")
    var dropPreviousOnRestore = false

    @Option(help: "Write HOST:PORT to this file once listening.")
    var readyFile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error (env BACKUPD_LOG_LEVEL).")
    var logLevel = environment("BACKUPD_LOG_LEVEL", "info")

    func validate() throws {
        guard !blobDir.isEmpty else { throw ValidationError("--blob-dir (or BACKUPD_BLOB_DIR) is required") }
        guard !cert.isEmpty, !key.isEmpty else { throw ValidationError("--cert and --key (or BACKUPD_TLS_CERT, BACKUPD_TLS_KEY) are required") }
        guard parseListen() != nil else { throw ValidationError("--listen \"\(listen)\" is not HOST:PORT") }
        guard restoreJobs >= 1 else { throw ValidationError("--restore-jobs must be at least 1") }
        guard jobLeaseSeconds >= 1 else { throw ValidationError("--job-lease-seconds must be at least 1") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level \"\(logLevel)\" is not a log level") }
    }

    private func parseListen() -> (String, Int)? {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            return nil
        }
        return (String(listen[..<colon]), port)
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let (host, port) = parseListen()!
        var configuration = ServerConfiguration(
            tls: TLSSettings(certificateChainPath: cert, privateKeyPath: key, clientCAPath: clientCA.isEmpty ? nil : clientCA),
            catalogURL: catalogOptions.catalog, blobDirectory: blobDir)
        configuration.host = host
        configuration.port = port
        configuration.maxFrameBytes = maxFrameBytes
        configuration.jobs.maximumConcurrentJobs = maxJobs
        configuration.jobs.tools.pgDump = pgDump
        configuration.jobs.tools.pgRestore = pgRestore
        configuration.jobs.restoreParallelism = restoreJobs
        configuration.jobs.keepPreviousOnRestore = !dropPreviousOnRestore
        configuration.jobs.leaseSeconds = jobLeaseSeconds
        let readyFile = self.readyFile
        try await BackupService(configuration: configuration, logger: Logger(label: "backupd")).run { address in
            guard let readyFile, let ip = address.ipAddress, let port = address.port else { return }
            let hostPart = ip.contains(":") ? "[\(ip)]" : ip
            try? "\(hostPart):\(port)\n".write(toFile: readyFile, atomically: true, encoding: .utf8)
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Manage access tokens directly in the catalog (the server may be stopped).",
        subcommands: [Create.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token and print its secret, e.g. the first admin token.")

        @OptionGroup var catalogOptions: CatalogOptions
        @Option(help: "Namespace the token is bound to.") var namespace: String
        @Option(help: "viewer, operator or admin.") var role: String
        @Option(help: "Who or what uses the token.") var name = "admin"

        func validate() throws {
            guard let role = Role(name: role), role != .unspecified else {
                throw ValidationError("--role must be viewer, operator or admin, not \"\(role)\"")
            }
        }

        func run() async throws {
            let threadPool = NIOThreadPool(numberOfThreads: 1)
            threadPool.start()
            let catalog = Catalog(connectionString: catalogOptions.catalog, maximumConnections: 1, threadPool: threadPool)
            do {
                try await catalog.migrate()
                let (_, secret) = try await catalog.createToken(namespace: namespace, role: Role(name: role)!, name: name)
                print(secret)
                try await threadPool.shutdownGracefully()
            } catch {
                try? await threadPool.shutdownGracefully()
                throw ValidationError("\(error)")
            }
        }
    }
}
