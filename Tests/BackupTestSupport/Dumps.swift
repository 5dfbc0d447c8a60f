import BackupRules
import BackupStorage
import Foundation

/// A backup's dump as the server's catalog and blob store hold it: its
/// chunks in order, or one blob for a dump stored whole.
public func storedDump(_ server: some BackupTestServer, _ backupID: String) throws -> StoredDump {
    let snapshot = try TestPostgres.query(server.catalogDatabase, "SELECT dump_sha256, database_bytes FROM snapshots WHERE id = $1", backupID)[0]
    let sha256 = ContentHash(hex: snapshot.string("dump_sha256"))!
    let chunks = try TestPostgres.query(server.catalogDatabase, """
        SELECT c.sha256, c.size, c.blob_sha256, c.blob, c.compressed, b.size AS blob_size FROM dump_chunks c JOIN blobs b ON b.sha256 = c.blob
        WHERE c.snapshot_id = $1 ORDER BY c.position
        """, backupID).map { row in
        DumpChunk(sha256: ContentHash(hex: row.string("sha256"))!, size: row.uint64("size"),
                  blob: StoredBlob(hash: ContentHash(hex: row.string("blob_sha256"))!, size: row.uint64("blob_size"),
                                   name: ContentHash(hex: row.string("blob"))!),
                  compressed: row.bool("compressed"))
    }
    let size = snapshot.uint64("database_bytes")
    return chunks.isEmpty ? .blob(StoredBlob(hash: sha256, size: size)) : .chunks(sha256: sha256, size: size, chunks)
}

/// Reassembles a backup's dump into a new file in `directory`; returns its path.
public func reassembledDump(_ server: some BackupTestServer, _ backupID: String, in directory: String) async throws -> String {
    let path = "\(directory)/dump-\(backupID).backup"
    let (dump, store) = (try storedDump(server, backupID), try server.storage.open())
    try await onThread { try dump.materialize(at: path, from: store, interruption: nil) }
    return path
}

extension BlobStore {
    /// Stores a file by path, as a backup stores an opened document.
    public func put(contentsOf path: String) throws -> StoredBlob {
        try put(reading: LocalFile.open(path), upTo: .max, interruption: nil)
    }
}
