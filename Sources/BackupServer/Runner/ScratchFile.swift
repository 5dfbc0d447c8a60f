import BackupRules
import BackupStorage
import Foundation

/// A job's scratch copy of a dump: a new file (never an existing one or a
/// link), written in order; it closes when its job lets go of it and is
/// removed by that job.
final class ScratchFile: ArchiveMemberSink {
    private let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try writeAll(fd: fd, chunk, path: path)
    }

    func end(sha256: ContentHash) {}

    deinit { close(fd) }
}

/// The bytes an unprivileged writer may still put on the disk of
/// `directory`; nil when the disk cannot be asked. Every room check reads it here.
func freeDiskBytes(in directory: String) -> UInt64? {
    var info = statvfs()
    guard statvfs(directory, &info) == 0 else { return nil }
    return UInt64(info.f_bavail) * UInt64(info.f_frsize)
}

/// Refuses work that would leave the disk of `directory` with less than
/// `reserved` bytes free after writing `bytes` more.
func requireRoom(for bytes: UInt64, reserved: UInt64, in directory: String) throws {
    guard let free = freeDiskBytes(in: directory) else { return }
    guard free >= bytes + reserved else {
        throw JobFailure(description: "the blob store's disk has too little free space for \(bytes) more bytes "
                         + "(it keeps \(reserved) bytes free); try again later")
    }
}
