import BackupRules
import BackupStorage
import Foundation

/// A job's scratch copy of a dump: a new file (never an existing one or a
/// link), written in order; it closes when its job lets go of it and is
/// removed by that job.
final class ScratchFile: ArchiveMemberSink {
    private let file: LocalFile

    init(path: String) throws {
        file = try LocalFile.create(path)
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try file.write(chunk)
    }

    func end(sha256: ContentHash) {}
}

/// Refuses work that would leave the disk of `directory` with less than
/// `reserved` bytes free after writing `bytes` more.
func requireRoom(for bytes: UInt64, reserved: UInt64, in directory: String) throws {
    guard FileSystem.hasRoom(for: bytes, reserved: reserved, in: directory) else {
        throw JobFailure(description: "the blob store's disk has too little free space for \(bytes) more bytes "
                         + "(it keeps \(reserved) bytes free); try again later")
    }
}
