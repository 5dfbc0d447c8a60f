import BackupProto

/// One unit on the wire; a call is the frames that share a `callID`.
public struct Frame: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__frame__descriptor }

    public enum Kind: Sendable, Equatable {
        case start(CallStart)
        case message([UInt8])
        case halfClose
        case status(CallStatus)
        case cancel
    }

    public var callID: UInt32 = 0
    public var kind: Kind?

    public init() {}
    public init(callID: UInt32, _ kind: Kind) {
        self.callID = callID
        self.kind = kind
    }

    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &callID)
        if f.isReading {
            switch f.oneofCase(of: 2) {
            case 2: var start = CallStart(); f.field(2, &start); kind = .start(start)
            case 3: var bytes: [UInt8] = []; f.field(3, &bytes); kind = .message(bytes)
            case 4: kind = .halfClose
            case 5: var status = CallStatus(); f.field(5, &status); kind = .status(status)
            case 6: kind = .cancel
            default: kind = nil
            }
        } else {
            switch kind {
            case .start(var start): f.field(2, &start)
            case .message(var bytes): f.field(3, &bytes)
            case .halfClose: var empty: HalfClose? = HalfClose(); f.field(4, &empty)
            case .status(var status): f.field(5, &status)
            case .cancel: var empty: Cancel? = Cancel(); f.field(6, &empty)
            case nil: break
            }
        }
    }

    /// The empty HalfClose message.
    private struct HalfClose: WireMessage {
        static var descriptor: ProtobufCMessageDescriptor { backup__v1__half_close__descriptor }
        init() {}
        mutating func map(_ f: inout FieldMap) {}
    }

    /// The empty Cancel message.
    private struct Cancel: WireMessage {
        static var descriptor: ProtobufCMessageDescriptor { backup__v1__cancel__descriptor }
        init() {}
        mutating func map(_ f: inout FieldMap) {}
    }
}

/// Opens a call: the method, metadata (authorization) and a deadline.
public struct CallStart: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__call_start__descriptor }
    public var method = ""
    public var metadata: [MetadataEntry] = []
    public var timeoutMS: UInt32 = 0
    /// Not on the wire: set by `FrameDecoder` when the start frame breaks the
    /// API's contract (a NUL in its metadata, say), so the call is refused
    /// with INVALID_ARGUMENT instead of run with what protobuf-c made of it.
    public var problem: String?
    public init() {}
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &method)
        f.field(2, &metadata)
        f.field(3, &timeoutMS)
    }

    /// The value of a metadata key (keys are compared case-insensitively).
    public func metadata(_ key: String) -> String? {
        metadata.first { $0.key.lowercased() == key.lowercased() }?.value
    }
}

public struct MetadataEntry: WireMessage {
    public static var descriptor: ProtobufCMessageDescriptor { backup__v1__metadata_entry__descriptor }
    public var key = ""
    public var value = ""
    public init() {}
    public init(_ key: String, _ value: String) { self.key = key; self.value = value }
    public mutating func map(_ f: inout FieldMap) {
        f.field(1, &key)
        f.field(2, &value)
    }
}
