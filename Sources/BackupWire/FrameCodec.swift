import NIOCore

/// The frame size a peer accepts unless configured otherwise: 4 MiB.
public let defaultMaxFrameBytes = 4 * 1024 * 1024

/// Raised by `FrameDecoder` for input that ends the connection.
public enum FrameError: Error, Equatable, CustomStringConvertible {
    case tooLarge(length: Int, limit: Int)
    case undecodable(length: Int)

    public var description: String {
        switch self {
        case let .tooLarge(length, limit): "frame of \(length) bytes exceeds the limit of \(limit) bytes"
        case let .undecodable(length): "frame of \(length) bytes is not a backup.v1.Frame"
        }
    }

    /// The status sent to the peer before the connection closes.
    public var rpcError: RPCError {
        switch self {
        case .tooLarge: RPCError(.resourceExhausted, description)
        case .undecodable: RPCError(.invalidArgument, description)
        }
    }
}

/// Splits a byte stream into frames: a 4-byte big-endian length, then that
/// many bytes of one serialized `Frame`. A length over the limit is refused
/// as soon as the length is read, before any of the body is buffered.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Frame
    public let maxFrameBytes: Int

    public init(maxFrameBytes: Int = defaultMaxFrameBytes) {
        self.maxFrameBytes = maxFrameBytes
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self).map(Int.init) else { return nil }
        guard length <= maxFrameBytes else { throw FrameError.tooLarge(length: length, limit: maxFrameBytes) }
        guard buffer.readableBytes >= 4 + length else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readBytes(length: length)!
        guard var frame = try? Frame(serializedBytes: body) else { throw FrameError.undecodable(length: length) }
        if case .start(var start) = frame.kind, let violation = violation(inFrame: body) {
            start.problem = violation.description
            frame.kind = .start(start)
        }
        return frame
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        try decode(buffer: &buffer)
    }
}

/// Writes each frame as its 4-byte big-endian length and its bytes.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) {
        let bytes = data.serializedBytes()
        out.reserveCapacity(minimumWritableBytes: 4 + bytes.count)
        out.writeInteger(UInt32(bytes.count))
        out.writeBytes(bytes)
    }
}
