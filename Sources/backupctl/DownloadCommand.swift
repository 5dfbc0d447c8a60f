import ArgumentParser
import BackupClient
import BackupRules
import BackupStorage
import BackupWire
import Foundation

struct DownloadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "download",
        abstract: "Download a backup: its full archive (.tar.gz), or with --database-only its database dump.",
        discussion: """
            Waits while the server prepares the archive, then downloads it over HTTPS with a progress bar and checks \
            its SHA-256. The file is written as FILE.partial and renamed when complete and checked; run the same \
            command again to resume an interrupted download. --url prints the signed URL instead: anyone who has it \
            can fetch the archive until it expires.
            """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Backup ID.") var id: String
    @Option(name: .shortAndLong, help: "File to write (default: the archive's own name, in the current folder).") var output: String?
    @Flag(help: "The database dump alone (pg_dump custom format), not the files.") var databaseOnly = false
    @Flag(help: "Print the signed download URL instead of downloading.") var url = false

    func run() async throws {
        let (id, databaseOnly, global) = (id, databaseOnly, global)
        let download = try await global.withClient { client in
            var download = try await client.unary(Backups.requestDownload, .with { $0.backupID = id; $0.databaseOnly = databaseOnly })
            if !download.ready {
                let job = try await follow(download.jobID, client: client, quiet: global.json)
                download = try await client.unary(Backups.getDownload, .with { $0.id = download.id })
                guard download.ready else {
                    throw RPCError(.aborted, "preparing the archive failed: \(download.error.isEmpty ? job.error : download.error)")
                }
            }
            return download
        }
        if url {
            global.output(download) { $0.url }
            return
        }
        let path = output ?? download.filename
        let size = try await global.reportingErrors { try await fetch(download, to: path) }
        global.output(download) { _ in "saved \(path) (\(Format.bytes(size)), sha256 \(download.sha256))" }
    }

    /// Downloads into PATH.partial, resuming what an earlier run left there,
    /// and renames it to `path` once its size and SHA-256 are right.
    private func fetch(_ download: Download, to path: String) async throws -> UInt64 {
        let partial = path + ".partial"
        if !FileManager.default.fileExists(atPath: partial) {
            guard FileManager.default.createFile(atPath: partial, contents: nil) else {
                throw ValidationError("cannot create \(partial)")
            }
        }
        let file = try FileHandle(forUpdating: URL(fileURLWithPath: partial))
        defer { try? file.close() }
        var hash = SHA256Hasher()
        var held: UInt64 = 0
        // What an earlier run fetched is hashed again from disk; the server sends the rest only if the archive is the same.
        while let chunk = try file.read(upToCount: 1 << 20), !chunk.isEmpty {
            chunk.withUnsafeBytes { hash.update($0) }
            held += UInt64(chunk.count)
        }
        if held > download.sizeBytes {
            try file.truncate(atOffset: 0)
            (held, hash) = (0, SHA256Hasher())
        }
        let bar = ProgressBar(quiet: global.json)
        defer { bar.finish() }
        var received = held
        var total = download.sizeBytes
        let fetcher = try DownloadFetch(url: download.url, trusting: try global.settings())
        try await fetcher.fetch(from: held, etag: download.sha256) { start in
            total = start.total
            if !start.resumed && held > 0 {
                // The server sends the whole file: start over.
                try file.truncate(atOffset: 0)
                (received, hash) = (0, SHA256Hasher())
            }
            bar.start(from: received)
        } body: { chunk in
            try chunk.withUnsafeReadableBytes { bytes in
                hash.update(bytes)
                try file.write(contentsOf: bytes)
            }
            received += UInt64(chunk.readableBytes)
            bar.draw(transferred: received, of: total)
        }
        try file.synchronize()
        guard received == download.sizeBytes, hash.finish().hex == download.sha256 else {
            try? FileManager.default.removeItem(atPath: partial)
            throw RPCError(.dataLoss, "the downloaded file does not match the archive (\(received) of \(download.sizeBytes) bytes, "
                           + "or a different SHA-256); it was removed, run the command again")
        }
        if FileManager.default.fileExists(atPath: path) { try FileManager.default.removeItem(atPath: path) }
        try FileManager.default.moveItem(atPath: partial, toPath: path)
        return received
    }
}
