@testable import BackupServer
import NIOCore
import NIOEmbedded
import Testing

@Suite struct PartialFrameTimeoutTests {
    private func frame(_ length: Int) -> [UInt8] {
        [UInt8(length >> 24 & 0xff), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)]
            + [UInt8](repeating: 7, count: length)
    }

    private func send(_ channel: EmbeddedChannel, _ bytes: some Sequence<UInt8>) throws {
        try channel.writeInbound(ByteBuffer(bytes: Array(bytes)))
        _ = try channel.readInbound(as: ByteBuffer.self)
    }

    /// Half a frame, then silence: closed when the timeout has passed since the frame began.
    @Test func aFrameLeftHalfSentClosesTheConnection() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(handler: PartialFrameTimeout(timeout: .seconds(1)), loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try send(channel, frame(100).prefix(50))
        loop.advanceTime(by: .milliseconds(900))
        #expect(channel.isActive)
        loop.advanceTime(by: .milliseconds(200))
        #expect(!channel.isActive)
    }

    /// A client that keeps completing frames, each within the timeout, is
    /// never cut off, even when every read ends inside the next frame.
    @Test func framesThatKeepCompletingKeepTheConnection() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(handler: PartialFrameTimeout(timeout: .seconds(1)), loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let stream = (0..<10).flatMap { _ in frame(100) }
        // Reads of 104 bytes that each end 50 bytes into the next frame, 0.7 s apart: 7 s in all.
        var offset = 0
        try send(channel, stream[offset..<offset + 50])
        offset += 50
        while offset + 104 <= stream.count {
            loop.advanceTime(by: .milliseconds(700))
            try send(channel, stream[offset..<offset + 104])
            offset += 104
            #expect(channel.isActive, "closed at byte \(offset)")
        }
        try send(channel, stream[offset...])
        loop.advanceTime(by: .seconds(5))
        #expect(channel.isActive, "closed while no frame was under way")
    }
}
