import BackupClient
import BackupTestSupport
import BackupWire
import Foundation
import NIOCore

// Calls written frame by frame, for what no well-behaved client sends.

/// Opens a raw TLS connection, writes `bytes`, and hands each frame the
/// server sends to `onFrame` until it returns a value or the server closes.
func rawCall<T>(
    _ server: some WireTestServer, send bytes: ByteBuffer,
    onFrame: (Frame, NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> T?
) async throws -> T? {
    let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await server.settings().connect { _ in }
    return try await channel.executeThenClose { inbound, outbound in
        try await outbound.write(bytes)
        var received = ByteBuffer()
        var decoder = FrameDecoder()
        for try await chunk in inbound {
            received.writeImmutableBuffer(chunk)
            while let frame = try decoder.decode(buffer: &received) {
                if let value = try await onFrame(frame, outbound) { return value }
            }
        }
        return nil
    }
}

/// Every frame the server sends in answer to `bytes` before it closes the connection.
func exchange(_ server: some WireTestServer, _ bytes: ByteBuffer) async throws -> [Frame] {
    var frames: [Frame] = []
    let _: Bool? = try await rawCall(server, send: bytes) { frame, _ in
        frames.append(frame)
        return nil
    }
    return frames
}

func encode(_ frames: [Frame]) -> ByteBuffer {
    var bytes = ByteBuffer()
    for frame in frames { FrameEncoder().encode(data: frame, out: &bytes) }
    return bytes
}

func connectionStatus(_ frames: [Frame]) -> CallStatus? {
    guard let last = frames.last, last.callID == 0, case .status(let status) = last.kind else { return nil }
    return status
}

