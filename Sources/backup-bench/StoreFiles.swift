import ArgumentParser
import BackupRules
import BackupStorage
import Foundation

/// What encryption at rest costs a backup's documents, without a server:
/// every file of a folder put into an empty local blob store, as a backup
/// stores documents (hashed, then written), on one thread, unsealed and
/// sealed in turns; then the same content only sealed, into nothing.
struct StoreFiles: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store-files",
        abstract: "Put a folder's files into an empty local blob store, unsealed and sealed; print seconds of each as JSON.")
    @Argument(help: "The folder whose files are stored.") var folder: String
    @Option(help: "Where the stores are made (removed after each run).") var scratch = NSTemporaryDirectory()
    @Option(help: "Runs of each, in turns; the medians are printed.") var runs = 3

    func run() throws {
        let files = try FileManager.default.subpathsOfDirectory(atPath: folder).map { "\(folder)/\($0)" }
            .filter { (try? FileManager.default.attributesOfItem(atPath: $0)[.type] as? FileAttributeType) == .typeRegular }
        let keys = NamespaceKeys(dataKey: NamespaceKeys.newDataKey())
        var (plain, sealed, sealOnly): ([Double], [Double], [Double]) = ([], [], [])
        for run in 0..<runs {
            plain.append(try timed(files, root: "\(scratch)/store-files-\(run)-plain") { $0 })
            sealed.append(try timed(files, root: "\(scratch)/store-files-\(run)-sealed") { SealedBlobStore($0, keys: keys) })
            let start = ContinuousClock.now
            for path in files {
                let sealer = ContentSealer(keys: keys)
                try LocalFile.open(path).readChunks { sealer.seal($0) { _ in } }
                sealer.finish(address: ContentHash.of([])) { _ in }
            }
            sealOnly.append(seconds(since: start))
        }
        print(#"{"files": \#(files.count), "unsealed_s": \#(median(plain)), "sealed_s": \#(median(sealed)), "sealing_alone_s": \#(median(sealOnly))}"#)
    }

    private func timed(_ files: [String], root: String, _ store: (any BlobStore) -> any BlobStore) throws -> Double {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let blobs = store(try LocalBlobStore(root: root))
        let start = ContinuousClock.now
        for path in files {
            let file = try LocalFile.open(path)
            _ = try blobs.put(reading: file, upTo: .max, interruption: nil)
        }
        return seconds(since: start)
    }

    private func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = start.duration(to: .now).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }

    private func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
}
