import ArgumentParser
import BackupCatalog
import BackupPostgres
import BackupServer
import BackupStorage
import Foundation

/// `backupd config check`: what `serve` would run with, checked and shown,
/// so that an operator finds a bad setting before a restart does.
struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Check serve's settings before serving with them.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read serve's settings as serve would (options, BACKUPD_ variables, --config FILE), check them and the files they name, and print them with where each came from, secrets redacted.",
            discussion: "The catalog is not connected to and nothing listens. Exits 0 when serve would start with these settings, else names what is wrong.")

        @OptionGroup var options: ServeOptions

        func run() async throws {
            // What serve reads before it listens: the catalog's connection string, the download keys, the TLS files, the store's settings.
            // As serve connects: with what backupd's PG* variables add, and the catalog pool's TCP settings.
            let catalog: String
            do {
                catalog = ConnectionString.adding(Catalog.connectionDefaults, to: try ConnectionString.absorbingEnvironment(options.catalog.catalog))
            } catch {
                throw ValidationError("--catalog: \(error)")
            }
            let configuration = try options.serverConfiguration(descriptorsForConnections: .max)
            _ = try options.blobStore.objectStore()
            // The folders serve writes to, and the tools its jobs run (helper finding: check passed what serve refused).
            let blobDir = options.blobStore.blobDir
            guard FileSystem.canMakeFolder(at: blobDir) else { throw ValidationError("--blob-dir \(blobDir) is not a folder backupd can make or write to") }
            if options.jobs.maxJobs > 0 {
                for (flag, tool) in [("--pg-dump", options.jobs.pgDump), ("--pg-restore", options.jobs.pgRestore)] where !FileSystem.isExecutable(tool) {
                    throw ValidationError("\(flag) \(tool) is not a program backupd can run")
                }
            }
            let certificate: String
            do {
                certificate = try TLSCredentials(options.listener.tls).check()
            } catch {
                throw ValidationError("\(error)")
            }
            let layered = try LayeredArguments.resolving(Array(CommandLine.arguments.dropFirst()),
                                                         environment: ProcessInfo.processInfo.environment)
            let settings = Setting.of(ServeOptions.self).filter { !ServeOptions.testOnly.contains($0.name) }
            print("# The settings backupd serve runs with; after each, where it came from. Secrets are redacted.")
            print(SettingsReport.render(settings, values: Setting.values(of: options), origins: layered.origins))
            print("# The catalog as serve connects to it: \(ConnectionString.redacted(catalog))")
            print("# TLS: \(certificate)")
            if let keys = configuration.downloads.keys {
                print("# Download keys: \(keys.keys.map(\.id).joined(separator: ", ")); links are signed with \(keys.signer.id)")
            } else {
                print("# Download keys: none; downloads are refused")
            }
            if let keys = configuration.storageKeys {
                print("# Storage keys: \(keys.file.keys.map(\.id).joined(separator: ", ")); new namespaces' keys are wrapped with \(keys.file.current.id)")
            } else {
                print("# Storage keys: none; backups are kept unencrypted")
            }
        }
    }
}
