import BackupPostgres
import Foundation

/// A PostgreSQL cluster of a test's own, apart from the catalog's (the
/// private cluster of `make test`): for app databases whose server a test
/// configures (`autovacuum_naptime`), restarts or stops. Loopback only,
/// trust authentication, run as the `postgres` user when the tests run as
/// root. `remove()` stops it and deletes its data. Starting, stopping and
/// creating a database wait off the cooperative pool (`offThePool`): initdb
/// and pg_ctl take seconds, which the servers a test runs in its process need.
public final class TestCluster: Sendable {
    public let port: Int
    public let folder: String
    private static let bin: String? = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql"))?
        .sorted { $0.compare($1, options: .numeric) == .orderedAscending }.last.map { "/usr/lib/postgresql/\($0)/bin" }

    private var data: String { folder + "/data" }

    /// initdb and start, with `settings` added to postgresql.conf.
    public static func start(settings: [String: String] = [:]) async throws -> TestCluster {
        try await offThePool { try startBlocking(settings: settings) }
    }

    private static func startBlocking(settings: [String: String]) throws -> TestCluster {
        guard let bin else { throw TestSupportError("PostgreSQL server binaries not found under /usr/lib/postgresql") }
        // Under /var/tmp, which the postgres user can reach whatever the checkout's folder allows.
        let folder = "/var/tmp/backupd-test-cluster-\(UUID().uuidString.prefix(8).lowercased())"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        if getuid() == 0 { _ = try runCommand("/bin/chown", ["postgres:postgres", folder]) }
        let cluster = TestCluster(port: try freeLoopbackPort(), folder: folder)
        let initdb = try cluster.asPostgres("\(bin)/initdb", ["-D", cluster.data, "-U", "postgres", "--auth=trust",
                                                              "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        guard initdb.status == 0 else {
            cluster.remove()
            throw TestSupportError("initdb failed: \(initdb.standardError)")
        }
        let conf = ["listen_addresses": "'127.0.0.1'", "port": "\(cluster.port)", "unix_socket_directories": "'\(folder)'",
                    "fsync": "off", "max_connections": "50", "shared_buffers": "32MB"].merging(settings) { $1 }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: cluster.data + "/postgresql.conf"))
        handle.seekToEndOfFile()
        handle.write(Data(conf.map { "\($0.key) = \($0.value)\n" }.joined().utf8))
        try handle.close()
        do {
            try cluster.control("start")
        } catch {
            cluster.remove()
            throw error
        }
        return cluster
    }

    private init(port: Int, folder: String) {
        self.port = port
        self.folder = folder
    }

    /// A connection string to `database` on this cluster as `user`.
    public func connectionString(_ database: String, user: String = "postgres") -> String {
        "host=127.0.0.1 port=\(port) user=\(user) dbname=\(database)"
    }

    /// Creates a database named `prefix_` and 8 random characters; returns its name.
    public func createDatabase(_ prefix: String) async throws -> String {
        let name = TestPostgres.uniqueName(prefix)
        let postgres = connectionString("postgres")
        try await offThePool { _ = try PostgresConnection(postgres).query("CREATE DATABASE \(name)") }
        return name
    }

    /// Stops the server (fast: sessions are ended), as a crash or an operator's restart would.
    public func stop() async throws { try await offThePool { try self.control("stop", "-m", "fast") } }

    /// Starts it again after `stop`.
    public func startAgain() async throws { try await offThePool { try self.control("start") } }

    /// Stops every process of the cluster (SIGSTOP): it takes connections and
    /// answers nothing, as a hung server or a dropped network does; `thaw`
    /// lets it go on.
    public func freeze() async throws { try await signalEveryProcess("STOP") }

    public func thaw() async throws { try await signalEveryProcess("CONT") }

    private func signalEveryProcess(_ signal: String) async throws {
        let pid = try String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8).split(separator: "\n").first.map(String.init) ?? ""
        guard Int(pid) != nil else { throw TestSupportError("no postmaster.pid in \(data)") }
        let sent = try await runCommand("/bin/bash", ["-c", "kill -\(signal) \(pid) $(pgrep -P \(pid))"])
        guard sent.status == 0 else { throw TestSupportError("kill -\(signal): \(sent.standardError)") }
    }

    public func remove() {
        _ = try? control("stop", "-m", "immediate")
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func control(_ action: String, _ options: String...) throws {
        guard let bin = Self.bin else { return }
        let result = try asPostgres("\(bin)/pg_ctl", ["-D", data, "-l", folder + "/server.log", "-w", "-t", "60", action] + options)
        guard result.status == 0 else {
            let log = (try? String(contentsOfFile: folder + "/server.log", encoding: .utf8)) ?? ""
            throw TestSupportError("pg_ctl \(action) failed: \(result.standardError) \(log.suffix(2000))")
        }
    }

    /// Runs a server program as `postgres` (when root) with no descriptor but
    /// 0-2 inherited: a server started by pg_ctl would otherwise keep the
    /// test process's internal pipes open, and Foundation would wait for it.
    private func asPostgres(_ executable: String, _ arguments: [String]) throws -> CommandResult {
        let closeInherited = "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; exec \"$@\""
        let command = (getuid() == 0 ? ["/usr/sbin/runuser", "-u", "postgres", "--"] : []) + [executable] + arguments
        return try runCommand("/bin/bash", ["-c", closeInherited, "as-postgres"] + command)
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestSupportError("socket: \(errno)") }
    defer { close(fd) }
    return try bindLoopback(fd)
}

/// Binds a TCP socket to a free port on 127.0.0.1 (and listens, with
/// `backlog`); returns the port.
public func bindLoopback(_ fd: Int32, listening backlog: Int32? = nil) throws -> Int {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && (backlog.map { listen(fd, $0) == 0 } ?? true) && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw TestSupportError("cannot bind a loopback port: \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}
