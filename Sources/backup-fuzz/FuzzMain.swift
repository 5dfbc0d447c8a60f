import BackupFuzz
import Foundation

#if FUZZING
// Built by `make fuzz` with `-sanitize=fuzzer`: libFuzzer's driver runs the
// target named by BACKUP_FUZZ_TARGET, with libFuzzer's own flags.
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// SwiftPM links an executable's entry point under this name.
@_cdecl("backup_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    guard let name = ProcessInfo.processInfo.environment["BACKUP_FUZZ_TARGET"], FuzzTarget(rawValue: name) != nil else {
        FileHandle.standardError.write(Data("set BACKUP_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))\n".utf8))
        return 2
    }
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in
        // Read again each time: a C function pointer captures nothing.
        let target = FuzzTarget(rawValue: ProcessInfo.processInfo.environment["BACKUP_FUZZ_TARGET"]!)!
        target.run(UnsafeRawBufferPointer(start: data, count: size))
        return 0
    }
}
#else
/// In an ordinary build: `backup-fuzz TARGET FILE|FOLDER...` runs each
/// input (each file of a folder) through the target once, which is how a
/// crash libFuzzer saved is reproduced under a debugger; `backup-fuzz seed
/// FOLDER` writes the seeds made in code into FOLDER/TARGET/.
@main
struct Replay {
    static func main() throws {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "seed", arguments.count == 2 {
            try writeSeeds(into: arguments.last!)
            return
        }
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name), arguments.count > 1 else {
            print("usage: backup-fuzz TARGET FILE|FOLDER... | backup-fuzz seed FOLDER")
            print("targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))")
            exit(2)
        }
        var ran = 0
        for path in arguments.dropFirst() {
            for file in try FuzzCorpus.files(at: path) {
                try FuzzCorpus.run(target, file)
                ran += 1
            }
        }
        print("\(name): \(ran) inputs, none crashed")
    }

    static func writeSeeds(into folder: String) throws {
        for target in FuzzTarget.allCases where !target.seeds.isEmpty {
            let directory = folder + "/" + target.rawValue
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (index, seed) in target.seeds.enumerated() {
                try Data(seed).write(to: URL(fileURLWithPath: directory + "/seed-\(index + 1)"))
            }
        }
    }
}
#endif
