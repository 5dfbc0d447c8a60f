import BackupRules
import BackupStorage
import Foundation
import NIOCore
import Synchronization

/// A real blob store, with one blob whose first read a test can
/// hold after its first chunk: a job caught in the middle of reading it
/// (an archive half written), for as long as the test needs, with no
/// timing to race.
public final class ReadGatedBlobStore: BlobStore {
    private let store: any BlobStore
    private struct Gate {
        var held: ContentHash?
        var reached = false
    }
    private let gate = Mutex(Gate())
    private let released = DispatchSemaphore(value: 0)

    public init(_ store: any BlobStore) {
        self.store = store
    }

    /// Holds the next read of `hash` after its first chunk, until `release`.
    public func hold(_ hash: ContentHash) {
        gate.withLock { $0.held = hash }
    }

    /// Whether a read of the held blob has reached the gate (and waits there).
    public var isHolding: Bool { gate.withLock { $0.reached } }

    public func release() {
        released.signal()
    }

    public func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        var first = true
        return try store.read(hash, interruption: interruption) { chunk in
            try consume(chunk)
            guard first else { return }
            first = false
            let stop = gate.withLock { gate in
                guard gate.held == hash, !gate.reached else { return false }
                gate.reached = true
                return true
            }
            if stop { released.wait() }
        }
    }

    public func readObject(_ name: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        try store.readObject(name, interruption: interruption, consume)
    }
    public func writer() throws -> any BlobWriter { try store.writer() }
    public func objectWriter() throws -> any BlobWriter { try store.objectWriter() }
    public func name(of hash: ContentHash) -> ContentHash { store.name(of: hash) }
    public func contains(_ hash: ContentHash) throws -> Bool { try store.contains(hash) }
    public func reuse(_ hash: ContentHash) -> Bool { store.reuse(hash) }
    public var reuseClaims: ReuseClaims { store.reuseClaims }
    /// The wrapped store's view: a job writes through it, and only reads are gated.
    public func asking(_ claims: ReuseClaims) -> any BlobStore { store.asking(claims) }
    public func remove(_ hash: ContentHash) throws { try store.remove(hash) }
    public func remove(all hashes: [ContentHash]) -> (removed: [ContentHash], failure: (any Error)?) { store.remove(all: hashes) }
    public func dropAbandonedWrites(startedBefore cutoff: Date) throws -> Int { try store.dropAbandonedWrites(startedBefore: cutoff) }
    public func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash] { try store.storedHashes(unusedSince: cutoff) }
    public func put(reading file: LocalFile, upTo size: UInt64, interruption: Interruption?) throws -> StoredBlob {
        try store.put(reading: file, upTo: size, interruption: interruption)
    }
    public func adopt(_ path: String) throws -> StoredBlob { try store.adopt(path) }
    public func adopt(_ path: String, as blob: StoredBlob) throws -> StoredBlob { try store.adopt(path, as: blob) }
    public func size(of hash: ContentHash) throws -> UInt64? { try store.size(of: hash) }
    public func read(_ hash: ContentHash, at offset: UInt64, length: Int) throws -> ByteBuffer { try store.read(hash, at: offset, length: length) }
    public var rangeReadSize: Int { store.rangeReadSize }
    public func materialize(_ hash: ContentHash, at path: String) throws { try store.materialize(hash, at: path) }
    public var localFolder: String? { store.localFolder }
}
