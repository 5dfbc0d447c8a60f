import BackupRules
import BackupStorage
import BackupWire
import NIOCore

extension FuzzTarget {
    /// Well-formed inputs to start from, made by the same encoders and
    /// signers the server and client use. `archive` and `dump` take files
    /// made by tar and pg_dump (`scripts/fuzz-seeds.sh`), so none here.
    public var seeds: [[UInt8]] {
        switch self {
        case .frames: Self.frameSeeds
        case .requests: Self.requestSeeds
        case .signedURL: Self.linkSeeds.map { Array($0.utf8) }
        case .http: Self.httpSeeds.map { Array($0.utf8) }
        case .archive, .dump: []
        }
    }

    private static let exampleID = "0b8f6c1e-3f1a-4d2b-9a57-2c1d5e6f7a80"

    private static func sample(_ message: some WireMessage) -> (type: Int, bytes: [UInt8]) {
        let type = ObjectIdentifier(type(of: message))
        return (requestTypes.firstIndex { ObjectIdentifier($0) == type }!, message.serializedBytes())
    }

    private static var sampleRequests: [(type: Int, bytes: [UInt8])] {
        let register = RegisterEnvironmentRequest.with {
            $0.namespace = "shop"; $0.name = "shop-prod"; $0.app = "shop"
            $0.databaseURL = "postgresql://app@127.0.0.1:5432/shop?sslmode=require"; $0.fileStorePath = "/srv/shop/files"
            $0.fileQuery = "SELECT path FROM documents"; $0.packageVersion = "1.4.2"
        }
        let list = ListBackupsRequest.with { $0.namespace = "shop"; $0.environment = "shop-prod"; $0.pageSize = 50; $0.pageToken = "abc" }
        let create = CreateBackupRequest.with { $0.namespace = "shop"; $0.environment = "shop-prod"; $0.comment = "before release" }
        let restore = RestoreBackupRequest.with { $0.backupID = exampleID; $0.targetNamespace = "shop"; $0.targetEnvironment = "shop-test" }
        let upload = StartUploadRequest.with {
            $0.namespace = "shop"; $0.environment = "shop-prod"; $0.filename = "snapshot.tar.gz"; $0.sizeBytes = 1 << 20
            $0.sha256 = String(repeating: "0f", count: 32)
        }
        let chunk = UploadChunk.with { $0.uploadID = exampleID; $0.offset = 65536; $0.data = Array("chunk".utf8) }
        let start = CallStart.with {
            $0.method = Backups.listBackups.name; $0.timeoutMS = 30000
            $0.metadata = [MetadataEntry("authorization", "Bearer bkp_0123456789abcdef")]
        }
        return [sample(register), sample(list), sample(create), sample(GetBackupRequest.with { $0.id = exampleID }),
                sample(restore), sample(upload), sample(chunk), sample(start)]
    }

    private static var requestSeeds: [[UInt8]] {
        (0..<requestTypes.count).map { [UInt8($0)] } + sampleRequests.map { [UInt8($0.type)] + $0.bytes }
    }

    private static var frameSeeds: [[UInt8]] {
        let start = CallStart.with {
            $0.method = Backups.getBackup.name
            $0.metadata = [MetadataEntry("authorization", "Bearer bkp_0123456789abcdef")]
        }
        let call: [Frame] = [
            Frame(callID: 9, .start(start)),
            Frame(callID: 9, .message(GetBackupRequest.with { $0.id = exampleID }.serializedBytes())),
            Frame(callID: 9, .halfClose),
        ]
        let other: [Frame] = [
            Frame(callID: 21, .start(CallStart.with { $0.method = Backups.uploadChunks.name })),
            Frame(callID: 21, .message(sampleRequests[6].bytes)),
            Frame(callID: 21, .cancel),
            Frame(callID: 22, .status(CallStatus())),
        ]
        let encoded = [call, other].map { frames in
            var buffer = ByteBuffer()
            for frame in frames { FrameEncoder().encode(data: frame, out: &buffer) }
            return Array(buffer.readableBytesView)
        }
        // A length over the limit, refused before its body arrives.
        return encoded + [[0x00, 0x10, 0x00, 0x00] + encoded[0]]
    }

    private static var linkSeeds: [String] {
        let path = "/v1/downloads/\(exampleID)/shop-prod-20261205-0300.tar.gz"
        return [path + "?" + keys.signedQuery(path: path, expires: now + 3600),
                path + "?" + keys.signedQuery(path: path, expires: now - 1),
                "old = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n# comment\n"]
    }

    private static var httpSeeds: [String] {
        let path = "/v1/downloads/\(exampleID)/shop-prod-20261205-0300.tar.gz"
        let signed = path + "?" + keys.signedQuery(path: path, expires: now + 3600)
        return [
            "GET \(signed) HTTP/1.1\r\nHost: backupd\r\nRange: bytes=0-1023\r\n\r\n",
            "HEAD \(signed) HTTP/1.1\r\nHost: backupd\r\nIf-Range: \"\(String(repeating: "ab", count: 32))\"\r\nRange: bytes=-500\r\n\r\n"
                + "GET \(path) HTTP/1.1\r\nConnection: close\r\n\r\n",
            "POST /v1/downloads/x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
        ]
    }
}
