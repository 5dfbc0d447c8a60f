import Foundation
import Testing

/// The committed protoc-c output must be what `make proto` makes from the
/// committed Protos/backup.proto.
@Suite struct GeneratedCodeTests {
    @Test func committedCodeMatchesTheProto() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("proto-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }

        let protoc = Process()
        protoc.executableURL = URL(fileURLWithPath: "/usr/bin/protoc-c")
        protoc.currentDirectoryURL = root
        protoc.arguments = ["--c_out=\(scratch.path)", "-IProtos", "Protos/backup.proto"]
        try protoc.run()
        protoc.waitUntilExit()
        #expect(protoc.terminationStatus == 0)

        let pairs = [("backup.pb-c.c", "Sources/BackupProto/backup.pb-c.c"),
                     ("backup.pb-c.h", "Sources/BackupProto/include/backup.pb-c.h")]
        for (generated, committed) in pairs {
            let fresh = try String(contentsOf: scratch.appendingPathComponent(generated), encoding: .utf8)
            let current = try String(contentsOf: root.appendingPathComponent(committed), encoding: .utf8)
            #expect(fresh == current, "\(committed) is stale: run `make proto` and commit the result")
        }
    }
}
