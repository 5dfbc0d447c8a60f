import BackupClient
import BackupRules
import BackupStorage
import BackupWire
import Foundation
import Synchronization

/// Where `swift build` put the executables: beside the test binary that
/// runs (so a release test run starts release executables), unless
/// `BACKUPD_BIN_DIR` says otherwise.
public let binDirectory: String = {
    if let chosen = ProcessInfo.processInfo.environment["BACKUPD_BIN_DIR"] { return chosen }
    let running = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
    return FileManager.default.isExecutableFile(atPath: running + "/backupd") ? running : "\(projectRoot)/.build/debug"
}()

/// A copy of the demo app, database and file store, that a test may change.
public struct TestApp: Sendable {
    public let database: String
    public let fileStore: String
    let scratch: ScratchDirectory

    public var connectionString: String { TestPostgres.connectionString(database) }

    public static func make() async throws -> TestApp {
        let database = try await TestPostgres.createDatabase("app", template: "demo_app")
        let scratch = try ScratchDirectory("files")
        let copy = try await runCommand("/bin/cp", ["-a", TestPostgres.demoFiles, scratch.path + "/files"])
        guard copy.status == 0 else { throw TestSupportError("cannot copy the demo file store: \(copy.standardError)") }
        return TestApp(database: database, fileStore: scratch.path + "/files", scratch: scratch)
    }

    /// The demo app's tables without their rows and an empty file store: for
    /// tests of what happens around backups (schedules, retention), where
    /// what a backup holds is not the point and each backup costs little.
    public static func makeEmpty() throws -> TestApp {
        let database = try TestPostgres.createDatabase("app", template: "demo_app")
        try TestPostgres.query(database, #"TRUNCATE "shop$invoice", "shop$order", "shop$customer", "system$filedocument""#)
        let scratch = try ScratchDirectory("files")
        try FileManager.default.createDirectory(atPath: scratch.path + "/files", withIntermediateDirectories: false)
        return TestApp(database: database, fileStore: scratch.path + "/files", scratch: scratch)
    }

    /// Drops the database and what restores left beside it, and removes the
    /// file store with its restore siblings (all inside the scratch folder).
    public func remove() {
        for name in [database] + ((try? databases(containing: "\(database)_")) ?? []) {
            TestPostgres.dropDatabase(name)
        }
        scratch.remove()
    }
}

/// The master keys test servers that keep content encrypted are given.
public let testStorageKeys = """
    test-storage-old = \(base64URL(Array(repeating: 3, count: 32)))
    test-storage-new = \(base64URL(Array(repeating: 5, count: 32)))
    """

/// The keys test servers sign download URLs with: an old one that still
/// verifies, and the newest, which signs.
public let testDownloadKeys = """
    # rotated out of signing, still accepted
    test-old = \(base64URL(Array(repeating: 7, count: 32)))
    test-new = \(base64URL(Array(repeating: 9, count: 32)))
    """

public struct TestSupportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A real backupd process on a free loopback port, with its own catalog
/// database and blob store, an admin token for namespace "acme" and a
/// platform token. File stores may lie under the system's temporary folder,
/// where `TestApp` makes them.
public final class TestServer: WireTestServer, @unchecked Sendable {
    public let catalogDatabase: String
    public var blobDirectory: String { storage.directory }
    public let storage: TestStorage
    public let address: String
    /// `HOST:PORT` of its admin listener (`/metrics`, `/healthz`, `/readyz`); empty when a test turned it off.
    public let adminAddress: String
    public let adminToken: String
    public let platformToken: String
    public let logPath: String
    public static let namespace = "acme"
    public static let caFile = "\(projectRoot)/certs/dev/ca.crt"
    private let process: Process
    private let scratch: ScratchDirectory

    /// The file store root a test server allows: the canonical temporary folder.
    public static let fileStoreRoot = canonicalPath(FileManager.default.temporaryDirectory.path) ?? "/tmp"

    /// Starts a server; `catalogDatabase` reuses an existing catalog (a restart), of the private cluster or of
    /// `catalogCluster` (one a test may restart).
    /// `environment` adds to (or with an empty value removes from) its environment.
    /// `descriptorLimit` starts it under `prlimit --nofile`, soft and hard; `downloadKeys` is its key file's text.
    /// Its blobs are in new storage of the configured kind, or in `storage` (a restart's, another process's).
    public static func start(arguments: [String] = [], catalogDatabase: String? = nil, catalogCluster: TestCluster? = nil,
                             storage given: TestStorage? = nil,
                             adminToken: String? = nil, platformToken: String? = nil,
                             environment extra: [String: String] = [:], descriptorLimit: Int? = nil,
                             downloadKeys: String = testDownloadKeys) async throws -> TestServer {
        let scratch = try ScratchDirectory("backupd")
        let catalog: String
        if let catalogDatabase {
            catalog = catalogDatabase
        } else if let catalogCluster {
            catalog = try await catalogCluster.createDatabase("catalog")
        } else {
            catalog = try await TestPostgres.createCatalogDatabase()
        }
        var storage = given
        if storage == nil { storage = try await TestStorage.make(directory: scratch.path + "/blobs") }
        let storageProcess = try await storage!.processSettings()
        let environment = [
            "BACKUPD_CATALOG": catalogCluster?.connectionString(catalog) ?? TestPostgres.connectionString(catalog),
            "BACKUPD_TLS_CERT": "\(projectRoot)/certs/dev/server.crt",
            "BACKUPD_TLS_KEY": "\(projectRoot)/certs/dev/server.key",
        ].merging(storageProcess.environment) { $1 }
        func createToken(_ arguments: [String]) async throws -> String {
            let created = try await runCommand("\(binDirectory)/backupd", ["token", "create"] + arguments, environment: environment)
            guard created.status == 0 else { throw TestSupportError("backupd token create failed: \(created.standardError)") }
            return created.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var token = adminToken ?? ""
        if adminToken == nil { token = try await createToken(["--namespace", namespace, "--role", "admin", "--name", "test-admin"]) }
        var platform = platformToken ?? ""
        if platformToken == nil { platform = try await createToken(["--platform", "--name", "test-platform"]) }

        let keyFile = scratch.path + "/download-keys"
        try downloadKeys.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let readyFile = scratch.path + "/ready"
        let logPath = scratch.path + "/backupd.log"
        guard FileManager.default.createFile(atPath: logPath, contents: nil) else { throw TestSupportError("cannot create \(logPath)") }
        let process = Process()
        let serve = ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--ready-file", readyFile,
                     "--file-store-root", fileStoreRoot, "--download-keys", keyFile] + storageProcess.arguments + arguments
            // As in process: no nightly backup because a test's run crossed a window, unless a test asks for the scheduler.
            + (arguments.contains("--scheduler") ? [] : ["--no-scheduler"])
        if let descriptorLimit {
            // prlimit sets the limit and then executes backupd in its own place, under the same process id.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
            process.arguments = ["--nofile=\(descriptorLimit):\(descriptorLimit)", "\(binDirectory)/backupd"] + serve
        } else {
            process.executableURL = URL(fileURLWithPath: "\(binDirectory)/backupd")
            process.arguments = serve
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }.merging(extra) { $1 }
            .filter { !$0.value.isEmpty }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        try process.run()

        for _ in 0..<300 {
            // The RPC address, then "admin HOST:PORT" (unless a test turned the admin listener off).
            if let ready = try? String(contentsOfFile: readyFile, encoding: .utf8), ready.hasSuffix("\n") {
                let lines = ready.split(separator: "\n").map(String.init)
                return TestServer(catalogDatabase: catalog, storage: storage!, address: lines[0],
                                  adminAddress: lines.dropFirst().first.map { String($0.dropFirst("admin ".count)) } ?? "",
                                  adminToken: token, platformToken: platform, logPath: logPath, process: process, scratch: scratch)
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        process.terminate()
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw TestSupportError("backupd did not start: \(log)")
    }

    private init(catalogDatabase: String, storage: TestStorage, address: String, adminAddress: String, adminToken: String,
                 platformToken: String, logPath: String, process: Process, scratch: ScratchDirectory) {
        self.catalogDatabase = catalogDatabase
        self.storage = storage
        self.address = address
        self.adminAddress = adminAddress
        self.adminToken = adminToken
        self.platformToken = platformToken
        self.logPath = logPath
        self.process = process
        self.scratch = scratch
    }

    public var isRunning: Bool { process.isRunning }
    /// The download key file it was started with (`--download-keys`): a test rewrites it to rotate keys.
    public var downloadKeysFile: String { scratch.path + "/download-keys" }
    public var processIdentifier: Int32 { process.processIdentifier }
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends `signal` and waits up to `timeout` for the process to exit; returns its exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32? {
        if process.isRunning { kill(process.processIdentifier, signal) }
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    /// Stops the server and removes its catalog and blobs.
    public func remove() async {
        await stop()
        await TestPostgres.dropDatabase(catalogDatabase)
        scratch.remove()
    }

    public func withClient<T: Sendable>(token: String?, _ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
        try await BackupClient.withConnection(try settings(token: token), body)
    }
}

/// A server reached over its TLS port, in process (`InProcessServer` started
/// live) or as a process (`TestServer`): clients and backupctl connect to `address`.
public protocol WireTestServer: BackupTestServer {
    /// `HOST:PORT` of its TLS listener.
    var address: String { get }
}

extension WireTestServer {
    public func settings(token: String? = nil) throws -> ClientSettings {
        try ClientSettings(address: address, token: token ?? adminToken, caFile: TestServer.caFile)
    }

    /// Runs backupctl against this server.
    public func backupctl(_ arguments: [String], token: String? = nil) async throws -> CommandResult {
        try await runCommand("\(binDirectory)/backupctl", arguments, environment: [
            "BACKUPCTL_ADDR": address, "BACKUPCTL_TOKEN": token ?? adminToken, "BACKUPCTL_CA": TestServer.caFile,
        ])
    }
}

/// Starts a server, runs `body`, and removes the server whatever happens.
public func withTestServer<T: Sendable>(arguments: [String] = [], descriptorLimit: Int? = nil,
                                        _ body: (TestServer) async throws -> T) async throws -> T {
    let server = try await TestServer.start(arguments: arguments, descriptorLimit: descriptorLimit)
    do {
        let value = try await body(server)
        await server.remove()
        return value
    } catch {
        print("backupd log:\n\(server.log)")
        await server.remove()
        throw error
    }
}

/// Makes a copy of the demo app (`empty`: its tables without rows, no
/// files), runs `body`, and removes the copy.
public func withTestApp<T: Sendable>(empty: Bool = false, _ body: (TestApp) async throws -> T) async throws -> T {
    try await using(empty ? try TestApp.makeEmpty() : try await TestApp.make(), removedBy: { $0.remove() }, body)
}

/// Runs `body` with `resource`, then removes it, whether `body` returns or
/// throws. Removal blocks (it drops databases, which waits for their
/// sessions to end), so it runs off the cooperative pool: a server of the
/// test whose job still holds such a session may need the pool to end it.
public func using<Resource: Sendable, T: Sendable>(_ resource: Resource, removedBy remove: @escaping @Sendable (Resource) -> Void,
                                                   _ body: (Resource) async throws -> T) async throws -> T {
    do {
        let value = try await body(resource)
        _ = try? await offThePool { remove(resource) }
        return value
    } catch {
        _ = try? await offThePool { remove(resource) }
        throw error
    }
}

/// Waits for a job to end and returns it.
public func waitForJob(_ id: String, on client: BackupClient, timeout: Duration = .seconds(120)) async throws -> Job {
    // The job's watch sends each change as it commits and ends with the job: no polling.
    var last: Job?
    try await client.call(Backups.watchJob, requests: [.with { $0.id = id }], timeout: timeout) { last = $0 }
    if let last, last.status.isTerminal { return last }
    throw TestSupportError("the watch of job \(id) ended before the job did")
}

/// A stand-in for a PostgreSQL client tool: a script that runs one shell
/// line (a gate that holds the job in that step, a failure) and then the real tool
/// with every argument it was given.
public func wrappedTool(_ tool: String, running line: String) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(tool)-wrapper-\(UUID().uuidString)").path
    try "#!/bin/sh\n\(line)\nexec /usr/bin/\(tool) \"$@\"\n".write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
    removedAtExit(path)
    return path
}

/// Files made for the whole run (tool wrappers, which a server may still run
/// after its test ends), removed when the test process exits.
private let filesToRemoveAtExit = Mutex<[String]>([])
private let removingFilesAtExit: Void = {
    atexit { for path in filesToRemoveAtExit.withLock({ $0 }) { unlink(path) } }
}()

private func removedAtExit(_ path: String) {
    _ = removingFilesAtExit
    filesToRemoveAtExit.withLock { $0.append(path) }
}

/// A stand-in for a tool that says it has started (`hasStarted`), then
/// waits until the test lets it go on (`release`): a job held in that step
/// for exactly as long as the test needs, however loaded the machine.
public final class GatedTool: Sendable {
    /// The script to pass as the tool (`--pg-dump`, `jobs.tools.pgDump`).
    public let path: String
    private let started: String
    private let gate: String
    private let scratch: ScratchDirectory

    /// A gate before `tool`; with `failure`, the tool fails saying it once the gate opens.
    public init(_ tool: String, failingWith failure: String? = nil) throws {
        scratch = try ScratchDirectory("\(tool)-gate")
        (started, gate) = (scratch.path + "/started", scratch.path + "/gate")
        _ = FileManager.default.createFile(atPath: gate, contents: nil)
        path = try wrappedTool(tool, running: "touch \(started); while [ -e \(gate) ]; do sleep 0.1; done"
                               + (failure.map { "; echo '\($0)' >&2; exit 1" } ?? ""))
    }

    public var hasStarted: Bool { FileManager.default.fileExists(atPath: started) }

    /// Lets every run of the tool, waiting or to come, go on.
    public func release() {
        unlink(gate)
    }

    /// Holds the runs to come again, until the next `release()`.
    public func hold() {
        _ = FileManager.default.createFile(atPath: gate, contents: nil)
    }

    deinit {
        release()
        scratch.remove()
    }
}


/// What handler-level tests need of a server, whether it runs as a process
/// (`TestServer`) or inside the test (`InProcessServer`).
public protocol BackupTestServer: Sendable {
    var catalogDatabase: String { get }
    /// Its work folder (`--blob-dir`): the store itself on the local folder.
    var blobDirectory: String { get }
    var storage: TestStorage { get }
    var adminToken: String { get }
    var platformToken: String { get }
    /// Runs `body` on a client connection with a token (the admin's when nil).
    func withClient<T: Sendable>(token: String?, _ body: @Sendable (BackupClient) async throws -> T) async throws -> T
}

extension BackupTestServer {
    /// Runs `body` on a client connection with the admin's token.
    public func withClient<T: Sendable>(_ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
        try await withClient(token: nil, body)
    }

    /// A new token with `role`, made through the API.
    public func makeToken(_ role: Role, namespace: String = TestServer.namespace, name: String = "test") async throws -> String {
        let adminToken = namespace == TestServer.namespace ? self.adminToken : nil
        if let adminToken {
            return try await withClient(token: adminToken) { client in
                try await client.unary(Backups.createToken, .with { $0.namespace = namespace; $0.role = role; $0.name = name }).secret
            }
        }
        let created = try await runCommand("\(binDirectory)/backupd", ["token", "create", "--namespace", namespace, "--role", role.description,
                                                               "--name", name, "--catalog", TestPostgres.connectionString(catalogDatabase)])
        guard created.status == 0 else { throw TestSupportError(created.standardError) }
        return created.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Registers `app` as environment `name` of the test namespace, as the platform does.
    @discardableResult
    public func register(_ app: TestApp, as name: String = "shop-production", in namespace: String = TestServer.namespace,
                         packageVersion: String = "1.0.0") async throws -> Environment {
        try await withClient(token: platformToken) { client in
            try await client.unary(Backups.registerEnvironment, .with {
                $0.namespace = namespace; $0.name = name; $0.app = "shop"
                $0.databaseURL = app.connectionString; $0.fileStorePath = app.fileStore; $0.packageVersion = packageVersion
            })
        }
    }

}
