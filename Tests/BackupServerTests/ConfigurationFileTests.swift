import BackupTestSupport
import Foundation
import Testing

/// The configuration file as an operator uses it, through the backupd
/// binary (the command line and its environment are the point): every
/// option of `serve` can be set in it, an option beats its variable which
/// beats the file, `config check` shows where each value came from with
/// secrets redacted, and a bad file is refused naming what is wrong.
@Suite struct ConfigurationFileTests {
    static let certificate = ["--cert", "\(projectRoot)/certs/dev/server.crt", "--key", "\(projectRoot)/certs/dev/server.key"]
    static let catalog = ["BACKUPD_CATALOG": "host=127.0.0.1 dbname=catalog user=backupd password=hunter2-in-the-catalog"]

    /// `backupd config check` with `file` as its configuration.
    func check(_ file: String, _ arguments: [String] = [], environment: [String: String] = catalog) async throws -> CommandResult {
        let scratch = try ScratchDirectory("config")
        defer { scratch.remove() }
        let path = scratch.path + "/backupd.yaml"
        try file.write(toFile: path, atomically: true, encoding: .utf8)
        return try await runCommand("\(binDirectory)/backupd", ["config", "check", "--config", path] + arguments, environment: environment)
    }

    @Test func theShippedExampleChecksAndEveryOptionOfServeIsASettingCheckShows() async throws {
        let scratch = try ScratchDirectory("config")
        defer { scratch.remove() }
        let keys = scratch.path + "/download-keys"
        try "k1 = \(Data(repeating: 7, count: 32).base64EncodedString())\n".write(toFile: keys, atomically: true, encoding: .utf8)
        let example = "\(projectRoot)/packaging/backupd.yaml.example"
        // The example's paths are a production machine's; the command line puts this machine's in their place.
        let checked = try await runCommand("\(binDirectory)/backupd", ["config", "check", "--config", example, "--download-keys", keys,
                                                                        "--storage-keys", keys, "--blob-dir", scratch.path] + Self.certificate,
                                           environment: Self.catalog)
        #expect(checked.status == 0, "\(checked.standardError)")
        let output = checked.standardOutput
        #expect(output.contains("max-jobs: 4  # \(example)"), "\(output)")
        #expect(output.contains("file-store-root: [\"/srv/apps\"]  # \(example)"), "\(output)")
        #expect(output.contains("download-keys: \"\(keys)\"  # command line"), "\(output)")
        #expect(output.contains("catalog: \"") && output.contains("password='REDACTED'") && output.contains("\"  # environment BACKUPD_CATALOG"), "\(output)")
        #expect(!output.contains("hunter2"), "\(output)")
        #expect(output.contains("# The catalog as serve connects to it: ") && output.contains("keepalives_idle='30'"), "\(output)")
        #expect(output.contains("restore-jobs: \(ProcessInfo.processInfo.activeProcessorCount)  # default"), "\(output)")
        #expect(output.contains("# Storage keys: k1; new namespaces' keys are wrapped with k1"), "\(output)")
        #expect(output.contains("# TLS: certificate serial") && output.contains("signed with k1"), "\(output)")

        // Every option `serve --help` lists is a setting check shows, by the same name.
        let help = try await runCommand("\(binDirectory)/backupd", ["serve", "--help"]).standardOutput
        let options = Set(help.matches(of: /\n  --(?:\[no-\])?([a-z0-9-]+)/).map { String($0.output.1) }).subtracting(["help", "version"])
        #expect(options.count > 50)
        for option in options {
            #expect(output.contains("\n\(option): ") || output.contains("\n# \(option): not set"), "\(option) is missing from config check")
        }
    }

    /// Helper finding: serve folds backupd's own PG* variables into the catalog's connection string; check shows it so.
    @Test func checkShowsTheCatalogAsServeConnects() async throws {
        let checked = try await check("blob-dir: /tmp\n", Self.certificate,
                                      environment: Self.catalog.merging(["PGPORT": "6543", "PGPASSWORD": "pg-variable-secret"]) { $1 })
        #expect(checked.status == 0, "\(checked.standardError)")
        let line = try #require(checked.standardOutput.split(separator: "\n").first { $0.hasPrefix("# The catalog as serve connects") })
        #expect(line.contains("port='6543'") && line.contains("password='REDACTED'") && !checked.standardOutput.contains("pg-variable-secret"),
                "\(line)")
    }

    @Test func anOptionBeatsItsVariableWhichBeatsTheFile() async throws {
        let file = "max-jobs: 3\nlog-level: debug\nscheduler: false\nfile-store-root: [/srv/a, /srv/b]\n"
        let fromFile = try await check(file, Self.certificate + ["--blob-dir", "/tmp"])
        #expect(fromFile.status == 0, "\(fromFile.standardError)")
        #expect(fromFile.standardOutput.contains("max-jobs: 3  # /"), "\(fromFile.standardOutput)")
        #expect(fromFile.standardOutput.contains("scheduler: false  # /"))
        #expect(fromFile.standardOutput.contains("file-store-root: [\"/srv/a\", \"/srv/b\"]  # /"))

        let environment = Self.catalog.merging(["BACKUPD_MAX_JOBS": "5", "BACKUPD_SCHEDULER": "true", "BACKUPD_FILE_STORE_ROOT": "/srv/c"]) { $1 }
        let fromVariables = try await check(file, Self.certificate + ["--blob-dir", "/tmp"], environment: environment)
        #expect(fromVariables.standardOutput.contains("max-jobs: 5  # environment BACKUPD_MAX_JOBS"), "\(fromVariables.standardOutput)")
        #expect(fromVariables.standardOutput.contains("scheduler: true  # environment BACKUPD_SCHEDULER"))
        #expect(fromVariables.standardOutput.contains("file-store-root: [\"/srv/c\"]  # environment"))
        #expect(fromVariables.standardOutput.contains("log-level: \"debug\"  # /"))

        let fromOptions = try await check(file, Self.certificate + ["--blob-dir", "/tmp", "--max-jobs=7", "--no-scheduler",
                                                                    "--file-store-root", "/srv/d"], environment: environment)
        #expect(fromOptions.standardOutput.contains("max-jobs: 7  # command line"), "\(fromOptions.standardOutput)")
        #expect(fromOptions.standardOutput.contains("scheduler: false  # command line"))
        #expect(fromOptions.standardOutput.contains("file-store-root: [\"/srv/d\"]  # command line"))

        // The older TLS variables still name the certificate and key, and the file may name them too.
        let tls = try await check("cert: /nonexistent/cert.pem\nkey: /nonexistent/key.pem\nblob-dir: /tmp\n",
                                  environment: Self.catalog.merging(["BACKUPD_TLS_CERT": "\(projectRoot)/certs/dev/server.crt",
                                                                     "BACKUPD_TLS_KEY": "\(projectRoot)/certs/dev/server.key"]) { $1 })
        #expect(tls.status == 0, "\(tls.standardError)")
        #expect(tls.standardOutput.contains("cert: \"\(projectRoot)/certs/dev/server.crt\"  # environment BACKUPD_TLS_CERT"))
    }

    /// Each mistake an operator makes in the file is refused before anything starts, naming the setting and where it is.
    @Test(arguments: [
        ("max-job: 3\n", "backupd has no setting \"max-job\" (did you mean max-jobs"),
        ("blob-dir: /tmp\nmax-jobs: many\n", "--max-jobs was set by"),
        ("blob-dir: /tmp\nmax-jobs: -1\n", "--max-jobs may not be negative"),
        ("listen: [a, b]\n", "listen takes one value"),
        ("scheduler: maybe\n", "scheduler takes true or false"),
        ("- max-jobs\n", "must be a mapping of setting names to values"),
        ("max-jobs: [\n", "is not YAML"),
        ("max-jobs: 2\nmax-jobs: 3\n", "max-jobs set more than once in the mapping at line 1"),
        ("{a: b}: x\n", "a setting's name must be a plain word"),
        ("config: /etc/other.yaml\n", "backupd has no setting \"config\""),
    ])
    func aBadFileIsRefusedNamingWhatIsWrong(_ file: String, _ message: String) async throws {
        let checked = try await check(file, Self.certificate)
        #expect(checked.status != 0)
        #expect(checked.standardError.contains(message), "\(checked.standardError)")
        #expect(!checked.standardError.contains("hunter2"))
    }

    /// Helper findings: YAML's errors quoted the file's lines, so a catalog password in the file reached the
    /// terminal and the journal; a repeated --config read one file and reported the other; a FIFO named as the
    /// file hung both commands; an empty variable turned a switch off.
    @Test func mistakesInTheFileNeitherQuoteItNorHang() async throws {
        let secret = "password=in-the-file-\(UInt32.random(in: 0...UInt32.max))"
        for file in ["catalog: \"host=x \(secret)\"\nmax-jobs: 2\nmax-jobs: 3\n", "catalog: host=x \(secret) : oops\n",
                     "catalog: [host=x \(secret)\n", "catalog: \"host=x \(secret)\"\nlisten: \u{e9}\n".replacingOccurrences(of: "\u{e9}", with: "\u{1}")] {
            let checked = try await check(file, Self.certificate)
            #expect(checked.status != 0 && !(checked.standardOutput + checked.standardError).contains(secret), "\(checked.standardError)")
        }
        let scratch = try ScratchDirectory("config")
        defer { scratch.remove() }
        let (first, second) = (scratch.path + "/first.yaml", scratch.path + "/second.yaml")
        try "max-jobs: 5\nblob-dir: /tmp\n".write(toFile: first, atomically: true, encoding: .utf8)
        try "max-jobs: 6\nblob-dir: /tmp\n".write(toFile: second, atomically: true, encoding: .utf8)
        let twice = try await runCommand("\(binDirectory)/backupd", ["config", "check", "--config", first, "--config=\(second)"] + Self.certificate,
                                         environment: Self.catalog)
        #expect(twice.standardOutput.contains("max-jobs: 6  # \(second)") && twice.standardOutput.contains("config: \"\(second)\""),
                "\(twice.standardOutput)")
        let fifo = scratch.path + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let hung = try await runCommand("\(binDirectory)/backupd", ["config", "check", "--config", fifo] + Self.certificate, timeLimit: 20)
        #expect(hung.status != 0 && hung.standardError.contains("is not a regular file"), "\(hung.standardError)")
        // What serve would refuse, check refuses: a blob folder it cannot write, a pg_dump that is not there.
        let unwritable = try await check("blob-dir: /proc/nope\n", Self.certificate)
        #expect(unwritable.status != 0 && unwritable.standardError.contains("--blob-dir /proc/nope"), "\(unwritable.standardError)")
        let noTool = try await check("blob-dir: /tmp\npg-dump: /nonexistent/pg_dump\n", Self.certificate)
        #expect(noTool.status != 0 && noTool.standardError.contains("--pg-dump /nonexistent/pg_dump"), "\(noTool.standardError)")
        let empty = try await runCommand("\(binDirectory)/backupd", ["config", "check"] + Self.certificate,
                                         environment: Self.catalog.merging(["BACKUPD_SCHEDULER": ""]) { $1 })
        #expect(empty.status != 0 && empty.standardError.contains("BACKUPD_SCHEDULER="), "\(empty.standardError)")
    }

    @Test func aMissingOrHugeFileIsRefusedAndServeRefusesWhatCheckRefuses() async throws {
        let missing = try await runCommand("\(binDirectory)/backupd", ["config", "check", "--config", "/nonexistent/backupd.yaml"])
        #expect(missing.status != 0 && missing.standardError.contains("/nonexistent/backupd.yaml"), "\(missing.standardError)")
        let huge = try await check(String(repeating: "# a comment\n", count: 100_000), Self.certificate)
        #expect(huge.status != 0 && huge.standardError.contains("the configuration file"), "\(huge.standardError)")
        // serve reads the file the same way, before it touches the catalog.
        let served = try await runCommand("\(binDirectory)/backupd", ["serve", "--config", "/nonexistent/backupd.yaml"], timeLimit: 30)
        #expect(served.status != 0 && served.standardError.contains("/nonexistent/backupd.yaml"), "\(served.standardError)")
        // A switch in a variable takes true or false, nothing else.
        let variable = try await runCommand("\(binDirectory)/backupd", ["config", "check"] + Self.certificate,
                                            environment: Self.catalog.merging(["BACKUPD_SCHEDULER": "sometimes"]) { $1 })
        #expect(variable.status != 0 && variable.standardError.contains("BACKUPD_SCHEDULER=sometimes"), "\(variable.standardError)")
    }

    /// A real server takes its settings from the file: here, JSON log lines,
    /// at the level its variable sets over the file's.
    @Test func aServerRunsWithTheSettingsOfItsFile() async throws {
        let scratch = try ScratchDirectory("config")
        defer { scratch.remove() }
        let path = scratch.path + "/backupd.yaml"
        try "log-format: json\nlog-level: error\nmax-jobs: 0\n".write(toFile: path, atomically: true, encoding: .utf8)
        let server = try await TestServer.start(arguments: ["--config", path], environment: ["BACKUPD_LOG_LEVEL": "info"])
        do {
            _ = try await server.backupctl(["list", "--namespace", TestServer.namespace, "--json"])
            try await eventually { server.log.contains("\"message\":\"rpc call\"") }
            let lines = server.log.split(separator: "\n")
            #expect(lines.allSatisfy { $0.hasPrefix("{") }, "\(server.log)")
        } catch {
            await server.remove()
            throw error
        }
        await server.remove()
    }
}
