import BackupClient
import BackupRules
import BackupServer
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// The serial number of the certificate a TLS listener presents to a new connection.
func presentedSerial(_ address: String) async throws -> String {
    let shown = try await runCommand("/bin/bash", ["-c", "openssl s_client -connect \(address) -servername localhost </dev/null 2>/dev/null"
        + " | openssl x509 -noout -serial"])
    return shown.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A server certificate for localhost signed by the development CA, with `serial`, and its key, in `folder`.
func developmentCertificate(serial: Int, in folder: String) async throws -> (certificate: String, key: String) {
    let dev = "\(projectRoot)/certs/dev"
    let (certificate, key) = ("\(folder)/server-\(serial).crt", "\(folder)/server-\(serial).key")
    let made = try await runCommand("/bin/bash", ["-c", """
        set -e
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out \(key) 2>/dev/null
        openssl req -new -key \(key) -subj /CN=localhost -out \(folder)/csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > \(folder)/ext
        openssl x509 -req -in \(folder)/csr -CA \(dev)/ca.crt -CAkey \(dev)/ca.key -set_serial \(serial) -days 30 \
          -extfile \(folder)/ext -out \(certificate) 2>/dev/null
        """])
    guard made.status == 0 else { throw TestSupportError("openssl: \(made.standardError)") }
    return (certificate, key)
}

/// Replaces `path` with `source`'s content as a deployment tool would: written beside it, then renamed over it.
func replace(_ path: String, with source: String) throws {
    let next = path + ".next"
    try? FileManager.default.removeItem(atPath: next)
    try FileManager.default.copyItem(atPath: source, toPath: next)
    guard rename(next, path) == 0 else { throw TestSupportError("cannot rename \(next) over \(path): errno \(errno)") }
}

/// Download keys and TLS certificates replaced while backupd runs: SIGHUP,
/// `backupd reload` and `BackupServer.reload`, with nothing cut and nothing
/// half-applied.
@Suite(.serialized) struct ReloadTests {
    static let oldKey = "old = " + base64URL([UInt8](repeating: 7, count: 32))
    static let newKey = "new = " + base64URL([UInt8](repeating: 9, count: 32))

    /// Operator: the download keys rotated across two processes in two
    /// steps (first learn, then sign), one by SIGHUP and one by `backupd
    /// reload`, while links each process signs are fetched from the other:
    /// none is refused, and by the end the new key signs.
    @Test func aKeyRotationAcrossTwoProcessesRefusesNoLink() async throws {
        try await withTestApp { app in
            let scratch = try ScratchDirectory("rotation")
            defer { scratch.remove() }
            let storage = try await TestStorage.make(directory: scratch.path + "/blobs")
            let first = try await TestServer.start(storage: storage, downloadKeys: Self.oldKey + "\n")
            let second: TestServer
            do {
                second = try await TestServer.start(catalogDatabase: first.catalogDatabase, storage: try storage.shared(workFolder: scratch.path + "/second"),
                                                    adminToken: first.adminToken, platformToken: first.platformToken,
                                                    downloadKeys: Self.oldKey + "\n")
            } catch {
                await first.remove()
                throw error
            }
            let steps = ["\(Self.oldKey)\n\(Self.newKey)\nsign-with old\n", "\(Self.oldKey)\n\(Self.newKey)\n"]
            do {
                let backup = try await finishedBackup(first, app)
                let download = try await first.withClient { try await readyDownload($0, backup) }
                var refused: [String] = []
                var signers: [String] = []
                for fetch in 0..<200 {
                    // Step one at fetch 50 (first by SIGHUP, second by backupd reload ten fetches later), step two at 120.
                    switch fetch {
                    case 50, 120:
                        try steps[fetch == 50 ? 0 : 1].write(toFile: first.downloadKeysFile, atomically: true, encoding: .utf8)
                        let reloads = first.log.components(separatedBy: "reloaded").count
                        kill(first.processIdentifier, SIGHUP)
                        try await eventually(within: .seconds(20)) { first.log.components(separatedBy: "reloaded").count > reloads }
                    case 60, 130:
                        try steps[fetch == 60 ? 0 : 1].write(toFile: second.downloadKeysFile, atomically: true, encoding: .utf8)
                        let reload = try await runCommand("\(binDirectory)/backupd", ["reload", "--admin", second.adminAddress])
                        #expect(reload.status == 0 && reload.standardOutput.contains("reloaded"), "\(reload.standardOutput)\(reload.standardError)")
                    default: break
                    }
                    let (signer, server) = fetch.isMultiple(of: 2) ? (first, second) : (second, first)
                    let url = try await signer.withClient { try await $0.unary(Backups.getDownload, .with { $0.id = download.id }) }.url
                    let elsewhere = url.replacingOccurrences(of: signer.address, with: server.address)
                    let answer = try await curl(["-o", "/dev/null", "-r", "0-1023", "-w", "%{http_code}", elsewhere])
                    if answer.standardOutput != "206" { refused.append("fetch \(fetch): \(answer.standardOutput) \(elsewhere)") }
                    signers.append(String(url.split(separator: "&").first { $0.hasPrefix("kid=") }?.dropFirst(4) ?? ""))
                }
                #expect(refused.isEmpty, "\(refused.prefix(5))")
                // The old key signed until the second step, the new one after it on both processes.
                #expect(signers[..<120].allSatisfy { $0 == "old" } && signers[131...].allSatisfy { $0 == "new" }, "\(signers)")

                // A key file that does not read: the reload says why, exits 1, and the keys in use stay.
                try "new = not base64!\n".write(toFile: second.downloadKeysFile, atomically: true, encoding: .utf8)
                let broken = try await runCommand("\(binDirectory)/backupd", ["reload", "--admin", second.adminAddress])
                #expect(broken.status == 1 && broken.standardError.contains("reload failed")
                        && broken.standardError.contains("\(second.downloadKeysFile): download key line 1"), "\(broken.standardError)")
                let url = try await second.withClient { try await $0.unary(Backups.getDownload, .with { $0.id = download.id }) }.url
                #expect(url.contains("kid=new"))
                #expect(try await curl(["-o", "/dev/null", "-r", "0-1023", "-w", "%{http_code}", url]).standardOutput == "206")
            } catch {
                await second.remove()
                await first.remove()
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }

    /// Operator: a certificate replaced and reloaded is presented to new
    /// connections while a download begun before it completes; a reload
    /// whose key does not match its certificate keeps the old pair and says why.
    @Test func aReplacedCertificateIsPresentedToNewConnectionsAndAnOpenStreamCompletes() async throws {
        let scratch = try ScratchDirectory("certificates")
        defer { scratch.remove() }
        let (certificate, key) = (scratch.path + "/server.crt", scratch.path + "/server.key")
        let initial = try await developmentCertificate(serial: 0x1001, in: scratch.path)
        let next = try await developmentCertificate(serial: 0x2002, in: scratch.path)
        let stray = try await developmentCertificate(serial: 0x3003, in: scratch.path)
        try FileManager.default.copyItem(atPath: initial.certificate, toPath: certificate)
        try FileManager.default.copyItem(atPath: initial.key, toPath: key)
        try await withTestApp { app in
            try await withInProcessServer(live: true, tls: TLSSettings(certificateChainPath: certificate, privateKeyPath: key)) { server in
                #expect(try await presentedSerial(server.address) == "serial=1001")
                let backup = try await finishedBackup(server, app)
                let download = try await server.withClient { try await readyDownload($0, backup) }
                // A download slow enough to be open across the reload (about 4 seconds).
                let file = scratch.path + "/archive"
                let rate = max(1024, download.sizeBytes / 4)
                let fetching = Task { try await curl(["-o", file, "--limit-rate", "\(rate)", "-w", "%{http_code}", download.url]) }
                try await eventually(within: .seconds(20)) { FileManager.default.fileExists(atPath: file) }

                try replace(certificate, with: next.certificate)
                try replace(key, with: next.key)
                let reloaded = try await server.reload()
                #expect(reloaded.contains("certificate") && reloaded.contains("serial 2002"), "\(reloaded)")
                #expect(try await presentedSerial(server.address) == "serial=2002")
                // Calls on new connections go on over the new certificate.
                #expect(try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = backup.id }) }.id == backup.id)

                let fetched = try await fetching.value
                #expect(fetched.status == 0 && fetched.standardOutput == "200", "\(fetched.standardError)")
                #expect(ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: file))).hex == download.sha256)

                // A key that is not the certificate's: refused, and the pair in use stays.
                try replace(key, with: stray.key)
                await #expect {
                    _ = try await server.reload()
                } throws: { error in
                    "\(error)".contains("does not match") && "\(error)".contains(key)
                }
                #expect(try await presentedSerial(server.address) == "serial=2002")

                // Helper finding: a huge file was parsed for a minute, stalling the process. Past 1 MiB it is refused at once.
                try Data(count: 2 << 20).write(to: URL(fileURLWithPath: key))
                await #expect {
                    _ = try await server.reload()
                } throws: { error in
                    "\(error)".contains("the private key \(key) is larger than 1 MiB")
                }
                #expect(try await presentedSerial(server.address) == "serial=2002")
            }
        }
    }
}
