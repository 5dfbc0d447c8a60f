import BackupFuzz
import Foundation
import XCTest

/// Every input kept under Tests/Fuzz (seeds, and each input that once
/// crashed a target) runs through its target in every `make test`; the
/// sanitized libFuzzer runs are `make fuzz` (and briefly in `make test`).
final class FuzzCorpusTests: XCTestCase {
    private let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz").path

    func testEveryTargetHasSeedsAndEveryKeptInputRuns() throws {
        for target in FuzzTarget.allCases {
            let files = try FuzzCorpus.files(at: corpus + "/" + target.rawValue)
            XCTAssertGreaterThanOrEqual(files.count, 3, "\(target.rawValue) has too few seeds")
            for file in files { try FuzzCorpus.run(target, file) }
        }
    }

    func testTheSeedsMadeInCodeAreTheOnesKept() throws {
        for target in FuzzTarget.allCases {
            for (index, seed) in target.seeds.enumerated() {
                let kept = try Data(contentsOf: URL(fileURLWithPath: corpus + "/\(target.rawValue)/seed-\(index + 1)"))
                XCTAssertEqual(Array(kept), seed, "\(target.rawValue) seed \(index + 1) is out of date: run scripts/fuzz-seeds.sh")
            }
        }
    }
}
