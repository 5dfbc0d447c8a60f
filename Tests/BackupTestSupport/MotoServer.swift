import BackupStorage
import Foundation

/// moto in server mode on a loopback port (`scripts/moto-server.py`, which
/// `make bench` runs too): the S3-compatible store of the object-store
/// tests, one per test process, each test in buckets of its own. It checks
/// signatures and permissions from the start of the tests: the access key
/// is made through its IAM API (a user whose policy allows S3), and then
/// moto is told to authenticate every request, so a request signed
/// wrongly, or with a key it does not know, is refused. It ends with the
/// test process (it watches its parent).
public struct MotoServer: Sendable {
    /// `http://127.0.0.1:PORT`.
    public let endpoint: String
    public let credentials: ObjectStoreCredentials
    public let region = "us-east-1"

    /// The test process's moto, started on first use.
    public static var shared: MotoServer {
        get async throws { try await started.value }
    }

    private static let started = Task<MotoServer, any Error> {
        let scratch = try ScratchDirectory("moto")
        let ready = scratch.path + "/ready"
        let process = try BackgroundCommand("/usr/bin/env", ["python3", "\(projectRoot)/scripts/moto-server.py", ready])
        for _ in 0..<3000 {
            if let line = try? String(contentsOfFile: ready, encoding: .utf8) {
                scratch.remove()
                let parts = line.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                guard parts.count == 3 else { throw TestSupportError("moto's answer was not understood: \(line)") }
                return MotoServer(endpoint: "http://127.0.0.1:\(parts[0])",
                                  credentials: ObjectStoreCredentials(accessKeyID: parts[1], secretAccessKey: parts[2]), process: process)
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        scratch.remove()
        throw TestSupportError("moto did not start (is moto[server] installed? make test-deps installs it)")
    }

    /// moto's process: held as long as the server is, that is for the whole test process.
    private let process: BackgroundCommand

    private init(endpoint: String, credentials: ObjectStoreCredentials, process: BackgroundCommand) {
        self.endpoint = endpoint
        self.credentials = credentials
        self.process = process
    }
}
