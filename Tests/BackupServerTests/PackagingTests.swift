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
        #expect(!unit.contains("@PREFIX@") && unit.contains("ExecStart=\(prefix)/bin/backupd serve $BACKUPD_SERVE_OPTIONS"))
        for directive in ["User=backupd", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "LimitNOFILE=65536",
                          "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=backupd", "ProtectHome=yes"] {
            #expect(unit.split(separator: "\n").contains(Substring(directive)), "\(directive)")
        }
        // systemd's own check: every directive known and well-formed, the command executable. Warnings count as failures.
        let verified = try await runCommand("/usr/bin/systemd-analyze", ["verify", unitPath])
        #expect(verified.status == 0 && verified.standardError.isEmpty && verified.standardOutput.isEmpty,
                "\(verified.standardOutput)\(verified.standardError)")

        // The example configuration names only variables and flags `backupd serve` takes.
        let example = try String(contentsOfFile: "\(prefix)/share/backupd/backupd.env.example", encoding: .utf8)
        let help = try await runCommand("\(prefix)/bin/backupd", ["serve", "--help"]).standardOutput
        for line in example.split(separator: "\n") where !line.hasPrefix("#") && line.contains("=") {
            let name = String(line.prefix { $0 != "=" })
            if name == "BACKUPD_SERVE_OPTIONS" {
                for flag in line.split(separator: " ").map(String.init).filter({ $0.hasPrefix("--") || $0.hasPrefix("\"--") }) {
                    let bare = flag.trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                    #expect([" ", ",", "\n"].contains { help.contains(bare + $0) }, "\(bare) is not a flag of backupd serve")
                }
            } else if name.hasPrefix("BACKUPD_") {
                #expect(help.contains(name), "\(name) is not read by backupd serve")
            }
        }
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/backupd/backupd-alerts.yml"))
        #expect(FileManager.default.fileExists(atPath: "\(prefix)/share/doc/backupd/operations.md"))
    }
}
