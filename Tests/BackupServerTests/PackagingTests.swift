import BackupTestSupport
import Foundation
import Testing

/// What `make install` lays down, as an operator installs it: the binaries,
/// a systemd unit that systemd itself accepts, and an example configuration
/// that names only settings backupd has.
@Suite struct PackagingTests {
    @Test func theInstalledUnitIsOneSystemdAcceptsWithItsHardening() async throws {
        let scratch = try ScratchDirectory("install")
        defer { scratch.remove() }
        let prefix = scratch.path + "/usr"
        let installed = try await runCommand("/bin/bash", ["-c", "cd \(projectRoot) && bash scripts/install.sh \(binDirectory) \(prefix)"])
        #expect(installed.status == 0, "\(installed.standardError)")
        let version = try await runCommand("\(prefix)/bin/backupd", ["--version"])
        #expect(version.status == 0 && version.standardOutput.hasPrefix("backupd 0."))

        let unitPath = "\(prefix)/lib/systemd/system/backupd.service"
        let unit = try String(contentsOfFile: unitPath, encoding: .utf8)
        #expect(!unit.contains("@PREFIX@") && unit.contains("ExecStart=\(prefix)/bin/backupd serve --config /etc/backupd/backupd.yaml"))
        for directive in ["User=backupd", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "LimitNOFILE=65536",
                          "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=backupd", "ProtectHome=yes"] {
            #expect(unit.split(separator: "\n").contains(Substring(directive)), "\(directive)")
        }
        // systemd's own check: every directive known and well-formed, the command executable. Warnings count as failures.
        let verified = try await runCommand("/usr/bin/systemd-analyze", ["verify", unitPath])
        #expect(verified.status == 0 && verified.standardError.isEmpty && verified.standardOutput.isEmpty,
                "\(verified.standardOutput)\(verified.standardError)")

        // The example configuration and environment file check as installed (with this machine's files in place
        // of a production machine's), and each variable of the environment file is one backupd reads.
        let keys = scratch.path + "/download-keys"
        try "k1 = \(Data(repeating: 7, count: 32).base64EncodedString())\n".write(toFile: keys, atomically: true, encoding: .utf8)
        let variables = try String(contentsOfFile: "\(prefix)/share/backupd/backupd.env.example", encoding: .utf8)
            .split(separator: "\n").filter { !$0.hasPrefix("#") && $0.contains("=") }
            .map { line in (String(line.prefix { $0 != "=" }), String(line.drop { $0 != "=" }.dropFirst()).trimmingCharacters(in: CharacterSet(charactersIn: "\""))) }
        #expect(!variables.isEmpty)
        let checked = try await runCommand("\(prefix)/bin/backupd", [
            "config", "check", "--config", "\(prefix)/share/backupd/backupd.yaml.example", "--blob-dir", scratch.path, "--download-keys", keys,
            "--storage-keys", keys,
            "--cert", "\(projectRoot)/certs/dev/server.crt", "--key", "\(projectRoot)/certs/dev/server.key",
        ], environment: Dictionary(uniqueKeysWithValues: variables))
        #expect(checked.status == 0, "\(checked.standardError)")
        for (name, _) in variables {
            #expect(checked.standardOutput.contains("# environment \(name)"), "\(name) is not read by backupd serve")
        }
        #expect(!checked.standardOutput.contains("CHANGE-ME"))
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/backupd/backupd-alerts.yml"))
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/doc/backupd/operations.md"))
    }
}
