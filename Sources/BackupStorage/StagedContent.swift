import BackupRules

/// Content written to a store as a stream whose hash is known only at its
/// end: hashed as it arrives, its first `heldBytes` kept in memory and the
/// rest in a scratch file made once they overflow. Content the store turns
/// out to hold already then costs no file (the local store) or no upload
/// (an object store). The scratch file goes with the staging unless it is
/// `release`d into the store.
final class StagedContent {
    private let heldBytes: Int
    private let scratchDirectory: String
    private(set) var held: [UInt8] = []
    private(set) var file: LocalFile?
    private let hasher: SHA256Hasher?
    private(set) var size: UInt64 = 0
    private var released = false

    /// Overflow goes to a new `.partial` file in `scratchDirectory`.
    /// Content kept under a name given to it (encrypted) is not hashed.
    init(heldBytes: Int, scratchDirectory: String, hashing: Bool = true) {
        self.heldBytes = heldBytes
        self.scratchDirectory = scratchDirectory
        hasher = hashing ? SHA256Hasher() : nil
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        hasher?.update(chunk)
        size += UInt64(chunk.count)
        if let file {
            try file.write(chunk)
        } else if held.count + chunk.count <= heldBytes {
            held.append(contentsOf: chunk)
        } else {
            try spill().write(chunk)
        }
    }

    /// The hash of everything written; call once, when writing is done.
    func finishHash() -> ContentHash {
        guard let hasher else { preconditionFailure("content staged without hashing has no hash") }
        return hasher.finish()
    }

    /// The scratch file, made (and given what was held) if it was not yet.
    func spill() throws -> LocalFile {
        if let file { return file }
        let file = try LocalFile.create("\(scratchDirectory)/\(base64URL(Secure.randomBytes(12))).partial")
        self.file = file
        try held.withUnsafeBytes { try file.write($0) }
        held = []
        return file
    }

    /// Reads the content back from its start, a chunk at a time.
    func readBack(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        if let file {
            try LocalFile.open(file.path).readChunks(body)
        } else {
            try held.withUnsafeBytes { try body($0) }
        }
    }

    /// The scratch file now belongs to the store (it was renamed into it).
    func release() { released = true }

    /// Removes the scratch file now: the store has the content already.
    func discard() {
        guard !released, let file else { return }
        FileSystem.remove(file.path)
        self.file = nil
    }

    deinit { discard() }
}
