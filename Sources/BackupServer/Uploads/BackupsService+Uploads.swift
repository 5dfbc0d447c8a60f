import BackupCatalog
import BackupStorage
import BackupRules
import BackupWire

/// The handlers of uploads: start, send chunks, finish, abandon.
extension BackupsService {
    func registerUploads(into router: inout RPCRouter) {
        router.unary(Backups.startUpload) { request, context in
            try context.authorize(.operator, in: request.namespace)
            guard let sha256 = ContentHash(hex: request.sha256) else {
                throw BackupError.invalidArgument("sha256 \"\(request.sha256)\" is not 64 lowercase hex digits")
            }
            guard request.sizeBytes > 0, request.sizeBytes <= uploads.maximumBytes else {
                throw BackupError.invalidArgument("size_bytes \(request.sizeBytes) is not between 1 and the limit of \(uploads.maximumBytes)")
            }
            guard request.filename.utf8.count <= 255, !request.filename.contains("/") else {
                throw BackupError.invalidArgument("filename must be a file's name: at most 255 bytes, no '/'")
            }
            // One reading of the disk serves both the namespace's share and the room check: free space that grows
            // between two readings could otherwise let an upload past its share.
            let usable = spool.usableDiskBytes()
            let actor = context.caller.tokenName
            // Once the reservation may have committed, the room check and the withdrawal run to their end even if
            // the client cancels or goes: a reservation is never left behind.
            return try await withoutCancellation { [catalog, spool, uploads] in
                let reservation = try await catalog.startUpload(
                    namespace: request.namespace, environment: request.environment, filename: request.filename, comment: request.comment,
                    size: request.sizeBytes, sha256: sha256, actor: actor, lifetime: spool.lifetime,
                    spoolBytes: uploads.spoolBytes, diskBytes: usable, namespaceShare: uploads.namespaceShare)
                do {
                    try spool.requireRoom(for: reservation, usable: usable)
                } catch {
                    try await catalog.withdrawUpload(reservation)
                    throw error
                }
                return reservation.upload
            }
        }
        router.clientStreaming(Backups.uploadChunks,
                               keptWhenCutShort: "the chunks it wrote whole are kept; ask GetUpload where to go on") { chunks, context in
            // The first chunk names the upload; it lives only in the sequence handed on, which lets go of each
            // chunk once taken, so a call waiting for its next chunk holds none.
            let (upload, received) = try await { () async throws -> (Upload, ReceivedChunks) in
                var iterator = chunks.makeAsyncIterator()
                guard let first = try await iterator.next() else { throw BackupError.invalidArgument("the call sent no chunk") }
                return (try await reachableUpload(first.uploadID, context), ReceivedChunks(first: first, rest: iterator))
            }()
            try await spool.receive(upload, chunks: received)
            return try await catalog.upload(id: upload.id)
        }
        router.unary(Backups.finishUpload) { request, context in
            let upload = try await reachableUpload(request.uploadID, context)
            let finishing = try await catalog.finishUpload(id: upload.id, actor: context.caller.tokenName)
            jobs.wake()
            return finishing
        }
        router.unary(Backups.getUpload) { request, context in
            try await reachableUpload(request.uploadID, context)
        }
        router.unary(Backups.abandonUpload) { request, context in
            let upload = try await reachableUpload(request.uploadID, context, platform: true)
            let (abandoned, changed) = try await catalog.abandonUpload(id: upload.id, actor: context.caller.tokenName)
            // Its reservation went with the commit; its data goes now (a call still writing fails its next count).
            if changed { spool.remove([upload.id]) }
            return abandoned
        }
    }

    /// An upload the caller may send to (or, with `platform`, the platform
    /// too); another namespace's answers NOT_FOUND as an unknown id does.
    func reachableUpload(_ id: String, _ context: CallContext, platform: Bool = false) async throws -> Upload {
        let upload = try await catalog.upload(id: id)
        try context.authorize(.operator, reaching: upload.namespace, platform: platform,
                              orAnswer: .notFound("upload \(upload.id) does not exist"))
        return upload
    }
}

/// A call's chunks, its first already read: each is handed out once and
/// not kept (the first is moved out, not copied), so a call waiting for its
/// next chunk holds none.
private final class ReceivedChunks: AsyncSequence {
    typealias Element = UploadChunk
    private var first: UploadChunk?
    private let rest: RequestMessages<UploadChunk>.AsyncIterator

    init(first: UploadChunk, rest: RequestMessages<UploadChunk>.AsyncIterator) {
        self.first = first
        self.rest = rest
    }

    func makeAsyncIterator() -> Iterator { Iterator(first: first.take(), rest: rest) }

    struct Iterator: AsyncIteratorProtocol {
        var first: UploadChunk?
        var rest: RequestMessages<UploadChunk>.AsyncIterator

        mutating func next() async throws -> UploadChunk? {
            if let chunk = first.take() { return chunk }
            return try await rest.next()
        }
    }
}
