import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// What a hostile namespace, or a platform service given a bad location,
/// meets when it points backupd at something that is not its own. Each test
/// is one threat of docs/security.md.
@Suite(.serialized) struct TrustBoundaryTests {
    /// Registers (as the platform) an environment at `path`, expecting `code`.
    @discardableResult
    private func register(_ server: some BackupTestServer, _ app: TestApp, name: String, path: String? = nil, url: String? = nil,
                          query: String = "", expect code: StatusCode,
                          sourceLocation: SourceLocation = #_sourceLocation) async -> RPCError? {
        await expectStatus(code, {
            _ = try await server.withClient(token: server.platformToken) { client in
                try await client.unary(Backups.registerEnvironment, .with {
                    $0.namespace = "acme"; $0.name = name; $0.app = "shop"; $0.databaseURL = url ?? app.connectionString
                    $0.fileStorePath = path ?? app.fileStore + "-\(name)"; $0.fileQuery = query
                })
            }
        }, sourceLocation: sourceLocation)
    }

    private func environmentNames(_ server: some BackupTestServer) async throws -> [String] {
        try await server.withClient { client in
            try await client.unary(Backups.listEnvironments, ListEnvironmentsRequest()).environments.map(\.name)
        }
    }

    /// Helper finding: an archive cache or upload spool configured outside
    /// the blob folder could be registered as an app's file store.
    @Test func aConfiguredArchiveCacheOrSpoolIsNoFileStore() async throws {
        let scratch = try ScratchDirectory("own-folders")
        defer { scratch.remove() }
        try await withTestApp { app in
            try await withInProcessServer(live: true, configure: {
                $0.downloads.cacheDirectory = scratch.path + "/cache"; $0.uploads.directory = scratch.path + "/spool"
            }) { server in
                await register(server, app, name: "cache", path: canonicalPath(scratch.path)! + "/cache", expect: .permissionDenied)
                await register(server, app, name: "spool", path: canonicalPath(scratch.path)! + "/spool", expect: .permissionDenied)
            }
        }
    }

    @Test func fileStoresStayStrictlyUnderTheirRootsAndApartFromEverythingElse() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                let scratch = try ScratchDirectory("stores")
                defer { scratch.remove() }
                try FileManager.default.createSymbolicLink(atPath: scratch.path + "/etc-link", withDestinationPath: "/etc")
                try FileManager.default.createSymbolicLink(atPath: scratch.path + "/store-link", withDestinationPath: app.fileStore)
                let blobs = canonicalPath(server.blobDirectory)!

                await register(server, app, name: "root", path: "/", expect: .invalidArgument)
                await register(server, app, name: "etc", path: "/etc", expect: .permissionDenied)
                await register(server, app, name: "the-root-itself", path: TestServer.fileStoreRoot, expect: .permissionDenied)
                await register(server, app, name: "blobs", path: blobs, expect: .permissionDenied)
                await register(server, app, name: "scratch", path: blobs + "/tmp", expect: .permissionDenied)
                await register(server, app, name: "above-blobs", path: String(blobs[..<blobs.lastIndex(of: "/")!]), expect: .permissionDenied)
                let other = await register(server, app, name: "same-store", path: app.fileStore, expect: .permissionDenied)
                #expect(other?.message.contains("acme/shop-production") == true)
                await register(server, app, name: "inside", path: app.fileStore + "/0d", expect: .permissionDenied)
                await register(server, app, name: "previous", path: app.fileStore + ".prerestore", expect: .permissionDenied)
                await register(server, app, name: "staging", path: app.fileStore + ".restore-12345678", expect: .permissionDenied)
                await register(server, app, name: "dotdot", path: app.fileStore + "/../files-x", expect: .invalidArgument)
                await register(server, app, name: "linked-folder", path: scratch.path + "/etc-link/cron.d", expect: .invalidArgument)
                await register(server, app, name: "linked-store", path: scratch.path + "/store-link", expect: .invalidArgument)
                await register(server, app, name: "newline", path: app.fileStore + "-x\n", expect: .invalidArgument)
                await register(server, app, name: "trailing-slash", path: app.fileStore + "-x/", expect: .invalidArgument)

                // Moving a store is checked the same way, and only the platform may move one.
                await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: server.platformToken) { client in
                        try await client.unary(Backups.updateEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "shop-production"; $0.fileStorePath = blobs
                        })
                    }
                }
                let adminMove = await expectStatus(.permissionDenied) {
                    _ = try await server.withClient { client in
                        try await client.unary(Backups.updateEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "shop-production"; $0.fileStorePath = app.fileStore + "-moved"
                        })
                    }
                }
                #expect(adminMove?.message.contains("platform") == true)
                #expect(try await environmentNames(server) == ["shop-production"])
                let stored = try await TestPostgres.query(server.catalogDatabase, "SELECT file_store_path FROM environments")
                #expect(stored.map { $0.string("file_store_path") } == [app.fileStore])
            }
        }
    }

    @Test func aStoreThatBecameALinkIsRefusedBeforeTheJobTouchesIt() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                // After registration the store is swapped for a link to a folder outside every root.
                try FileManager.default.moveItem(atPath: app.fileStore, toPath: app.fileStore + "-real")
                try FileManager.default.createSymbolicLink(atPath: app.fileStore, withDestinationPath: "/etc")
                try await server.withClient { client in
                    let job = try await waitForJob(try await createBackup(client).job.id, on: client)
                    #expect(job.status == .failed)
                    #expect(job.error.contains("file_store_path"), "\(job.error)")
                }
            }
        }
    }

    @Test func anAppDatabaseIsNeverTheCatalog() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let catalog = server.catalogDatabase
                for url in [TestPostgres.connectionString(catalog),
                            "host=localhost port=\(TestPostgres.port) user=postgres dbname=\(catalog)",
                            "postgresql://postgres@127.0.0.1:\(TestPostgres.port)/\(catalog)?sslmode=disable"] {
                    let refused = await register(server, app, name: "catalog", url: url, expect: .permissionDenied)
                    #expect(refused?.message.contains("catalog") == true, "\(url)")
                }
                await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: server.platformToken) { client in
                        try await client.unary(Backups.updateEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "shop-production"; $0.databaseURL = TestPostgres.connectionString(catalog)
                        })
                    }
                }
                // A row that reaches the catalog anyway (written before these checks existed) fails its jobs.
                try await TestPostgres.query(catalog, "UPDATE environments SET database_url = $1", TestPostgres.connectionString(catalog))
                try await server.withClient { client in
                    let job = try await waitForJob(try await createBackup(client).job.id, on: client)
                    #expect(job.status == .failed && job.error.contains("catalog"), "\(job.error)")
                }
                let tables = try await TestPostgres.query(catalog, "SELECT count(*) AS n FROM environments")
                #expect(tables[0].string("n") == "1")
            }
        }
    }

    @Test func backupdsOwnCredentialsNeverReachAServerATenantNames() async throws {
        let fake = try FakePostgresServer()
        defer { fake.stop() }
        let scratch = try ScratchDirectory("creds")
        defer { scratch.remove() }
        let passfile = scratch.path + "/pgpass"
        try "*:*:*:*:secret-from-passfile\n".write(toFile: passfile, atomically: true, encoding: .utf8)
        chmod(passfile, 0o600)
        try await withTestApp { app in
            let server = try await TestServer.start(environment: [
                "PGPASSWORD": "secret-from-environment", "PGPASSFILE": passfile, "PGUSER": "user-from-environment",
            ])
            let refused = await register(server, app, name: "fake", url: "host=127.0.0.1 port=\(fake.port) dbname=app",
                                         expect: .failedPrecondition)
            #expect(refused?.message.contains("password") == true, "\(refused?.message ?? "")")
            await register(server, app, name: "socket", url: "host=/var/run/postgresql dbname=app", expect: .permissionDenied)
            await register(server, app, name: "no-host", url: "dbname=app", expect: .invalidArgument)
            await register(server, app, name: "service", url: "host=127.0.0.1 service=catalog", expect: .invalidArgument)
            await register(server, app, name: "passfile", url: "host=127.0.0.1 passfile=/root/.pgpass", expect: .invalidArgument)
            await server.remove()
        }
        let received = fake.received
        #expect(fake.connections >= 1)
        #expect(!received.contains("secret-from"), "the fake server received a password")
        #expect(!received.contains("user-from-environment"))
        #expect(!fake.sawPasswordMessage)
    }

    @Test func appDatabasesStayOnTheAllowedHosts() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.appDatabases.allowedHosts = ["db.internal", "127.0.0.1"] }) { server in
                try await server.register(app)
                let refused = await register(server, app, name: "elsewhere",
                                             url: "host=localhost port=\(TestPostgres.port) user=postgres dbname=\(app.database)",
                                             expect: .permissionDenied)
                #expect(refused?.message.contains("host localhost is not among the allowed app database hosts") == true)
            }
        }
    }

    @Test func documentsThatAreLinksFIFOsOrInLinkedFoldersFailTheBackupAndStoreNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                let keys = try referencedKeys(app)
                let secret = "/etc/shadow"
                let fileManager = FileManager.default
                // Each attack changes one document and returns how to put it back.
                let attacks: [(String, (String) throws -> () throws -> Void)] = [
                    ("a symbolic link", { path in
                        try fileManager.moveItem(atPath: path, toPath: path + "-real")
                        try fileManager.createSymbolicLink(atPath: path, withDestinationPath: secret)
                        return { try fileManager.removeItem(atPath: path); try fileManager.moveItem(atPath: path + "-real", toPath: path) }
                    }),
                    ("a FIFO", { path in
                        try fileManager.moveItem(atPath: path, toPath: path + "-real")
                        #expect(mkfifo(path, 0o644) == 0)
                        return { try fileManager.removeItem(atPath: path); try fileManager.moveItem(atPath: path + "-real", toPath: path) }
                    }),
                    ("a hard link to a file of another user than the store's owner", { path in
                        // A file only its owner (another user) may read, linked into the store.
                        let secretFile = app.fileStore + "-secret"
                        try "TOPSECRET".write(toFile: secretFile, atomically: false, encoding: .utf8)
                        let other = try #require(getpwnam("postgres")).pointee
                        #expect(chown(secretFile, other.pw_uid, other.pw_gid) == 0 && chmod(secretFile, 0o600) == 0)
                        try fileManager.moveItem(atPath: path, toPath: path + "-real")
                        #expect(link(secretFile, path) == 0)
                        return { try fileManager.removeItem(atPath: path); try fileManager.moveItem(atPath: path + "-real", toPath: path) }
                    }),
                    ("in a folder that is a symbolic link", { path in
                        let folder = String(path[..<path.lastIndex(of: "/")!])
                        try fileManager.moveItem(atPath: folder, toPath: folder + "-moved")
                        try fileManager.createSymbolicLink(atPath: folder, withDestinationPath: folder + "-moved")
                        return { try fileManager.removeItem(atPath: folder); try fileManager.moveItem(atPath: folder + "-moved", toPath: folder) }
                    }),
                ]
                for (what, attack) in attacks {
                    // The first key in order, which the backup reaches first.
                    let key = keys.min()!
                    let undo = try attack("\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: key))")
                    try await server.withClient { client in
                        let created = try await createBackup(client)
                        let job = try await waitForJob(created.job.id, on: client)
                        #expect(job.status == .failed, "\(what)")
                        #expect(job.error.contains(key) && job.error.contains(what), "\(what): \(job.error)")
                    }
                    try undo()
                }
                let files = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM snapshot_files")
                #expect(files[0].string("n") == "0")
                let shadow = try ContentHash.of(Array(Data(contentsOf: URL(fileURLWithPath: secret))))
                let blobs = try LocalBlobStore(root: server.blobDirectory)
                #expect(!FileManager.default.fileExists(atPath: blobs.path(for: shadow)))
            }
        }
    }

    @Test func theBlobStoreIsPrivateAndAnOpenOneIsTightenedAtStart() async throws {
        let scratch = try ScratchDirectory("openblobs")
        defer { scratch.remove() }
        let blobs = scratch.path + "/blobs"
        let old = blobs + "/sha256/ab/cd/abcd-old"
        try FileManager.default.createDirectory(atPath: String(old[..<old.lastIndex(of: "/")!]), withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        try FileManager.default.createDirectory(atPath: blobs + "/tmp", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        chmod(blobs, 0o755)
        try "old blob".write(toFile: old, atomically: false, encoding: .utf8)
        chmod(old, 0o444)
        try await withTestApp { app in
            let server = try await TestServer.start(storage: try await TestStorage.make(.localFolder, directory: blobs))
            do {
                try await server.register(app)
                try await server.withClient { client in
                    let job = try await waitForJob(try await createBackup(client).job.id, on: client)
                    #expect(job.status == .finished, "\(job.error)")
                }
            } catch {
                await server.remove()
                throw error
            }
            await server.remove()
        }
        var folders = 0, files = 0
        for case let relative as String in FileManager.default.enumerator(atPath: blobs)! {
            let attributes = try FileManager.default.attributesOfItem(atPath: blobs + "/" + relative)
            let mode = (attributes[.posixPermissions] as? Int) ?? -1
            if attributes[.type] as? FileAttributeType == .typeDirectory {
                folders += 1
                #expect(mode == 0o700, "\(relative) has mode \(String(mode, radix: 8))")
            } else {
                files += 1
                #expect(mode & 0o077 == 0 && mode & 0o222 == 0, "\(relative) has mode \(String(mode, radix: 8))")
            }
        }
        #expect(folders > 3 && files > 300)
        let root = try FileManager.default.attributesOfItem(atPath: blobs)[.posixPermissions] as? Int
        #expect(root == 0o700)
    }

    @Test func restoredFilesBelongToTheStoresOwnerNotToBackupd() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                // The app's file store belongs to another user (the cluster's `postgres`), readable by its group.
                let owner = try #require(getpwnam("postgres")).pointee
                #expect(chown(app.fileStore, owner.pw_uid, owner.pw_gid) == 0)
                chmod(app.fileStore, 0o750)
                let backup = try await finishedBackup(server, app)
                try await server.withClient { client in
                    let job = try await restore(client, backup)
                    #expect(job.status == .finished, "\(job.error)")
                }
                let key = try referencedKeys(app)[0]
                let document = "\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: key))"
                for (path, mode) in [(app.fileStore, 0o750), ("\(app.fileStore)/\(key.prefix(2))", 0o750), (document, 0o640)] {
                    var info = stat()
                    #expect(lstat(path, &info) == 0)
                    #expect(info.st_uid == owner.pw_uid && info.st_gid == owner.pw_gid, "\(path)")
                    #expect(info.st_mode & 0o7777 == mode, "\(path) has mode \(String(info.st_mode & 0o7777, radix: 8))")
                    // A copy of its own: no hard link into the blob store.
                    #expect(path != document || info.st_nlink == 1)
                }
            }
        }
    }

    @Test func aRestoreDeletesNoFolderItDidNotMake() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                // Someone else's folder sits where the previous state would go.
                let foreign = app.fileStore + ".prerestore"
                try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: false)
                try "keep me".write(toFile: foreign + "/precious", atomically: true, encoding: .utf8)
                try await server.withClient { client in
                    let job = try await restore(client, backup)
                    #expect(job.status == .failed)
                    #expect(job.error.contains("not made by backupd"), "\(job.error)")
                }
                #expect(FileManager.default.fileExists(atPath: foreign + "/precious"))
                try noStagingLeft(app)

                // Once it is gone, restores work, and the next one removes only what the previous one moved aside.
                try FileManager.default.removeItem(atPath: foreign)
                try await server.withClient { client in
                    let first = try await restore(client, backup)
                    #expect(first.status == .finished, "\(first.error)")
                    #expect(FileManager.default.fileExists(atPath: foreign + "/.backupd-previous"))
                    let second = try await restore(client, backup)
                    #expect(second.status == .finished, "\(second.error)")
                }
            }
        }
    }
}

/// A PostgreSQL server impostor on loopback: it answers every connection's
/// startup with a request for a cleartext password and records what the
/// client sends, so a test can tell whether any credential arrived.
final class FakePostgresServer: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    private var passwordMessage = false
    private var accepted = 0
    private var thread: Thread?

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        guard bound == 0, listen(listener, 8) == 0 else { throw TestSupportError("fake server cannot listen") }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in serve() }
        self.thread = thread
        thread.start()
    }

    var received: String { lock.withLock { String(decoding: bytes, as: UTF8.self) } }
    var sawPasswordMessage: Bool { lock.withLock { passwordMessage } }
    var connections: Int { lock.withLock { accepted } }

    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func serve() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            lock.withLock { accepted += 1 }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            handle(client)
            close(client)
        }
    }

    private func handle(_ client: Int32) {
        // SSLRequest or GSSENCRequest first: refuse, then the startup message.
        while let packet = readPacket(client, typed: false) {
            let code = packet.count >= 4 ? packet[0..<4].reduce(0) { $0 << 8 | UInt32($1) } : 0
            if code == 80_877_103 || code == 80_877_104 {
                _ = write(client, "N", 1)
                continue
            }
            break
        }
        // AuthenticationCleartextPassword.
        let request: [UInt8] = [UInt8(ascii: "R"), 0, 0, 0, 8, 0, 0, 0, 3]
        _ = request.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
        var type: UInt8 = 0
        if read(client, &type, 1) == 1 {
            if type == UInt8(ascii: "p") { lock.withLock { passwordMessage = true } }
            _ = readPacket(client, typed: true)
        }
    }

    /// Reads one length-prefixed packet, recording its bytes.
    private func readPacket(_ client: Int32, typed: Bool) -> [UInt8]? {
        var header = [UInt8](repeating: 0, count: 4)
        guard readFully(client, &header) else { return nil }
        let length = Int(header.reduce(0) { $0 << 8 | UInt32($1) })
        guard length >= 4, length < 1 << 16 else { return nil }
        var body = [UInt8](repeating: 0, count: length - 4)
        guard readFully(client, &body) else { return nil }
        lock.withLock { bytes += body }
        return body
    }

    private func readFully(_ client: Int32, _ buffer: inout [UInt8]) -> Bool {
        var offset = 0
        while offset < buffer.count {
            let count = buffer.withUnsafeMutableBytes { read(client, $0.baseAddress! + offset, $0.count - offset) }
            guard count > 0 else { return false }
            offset += count
        }
        return true
    }
}
