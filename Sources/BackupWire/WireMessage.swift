import BackupProto
import CProtobufC
import Foundation

/// A message of the backupd API as a Swift value.
///
/// Each message describes its fields once, in `map(_:)`, which serves both
/// directions: reading a decoded protobuf-c struct and filling one to encode.
/// libprotobuf-c does the binary encoding; `FieldMap` is the only code that
/// touches protobuf-c memory, so handlers never see a C pointer.
public protocol WireMessage: Sendable, Equatable {
    /// The protobuf-c descriptor generated for this message.
    static var descriptor: ProtobufCMessageDescriptor { get }
    init()
    mutating func map(_ fields: inout FieldMap)
}

/// Raised when bytes from the wire are not what they claim to be.
public struct WireDecodingError: Error, Equatable, CustomStringConvertible {
    public let messageName: String
    public var description: String { "could not decode \(messageName)" }
}

extension WireMessage {
    /// Builds a message by setting fields on a default value.
    public static func with(_ configure: (inout Self) -> Void) -> Self {
        var message = Self()
        configure(&message)
        return message
    }

    /// Decodes the protobuf binary form.
    public init(serializedBytes bytes: some Collection<UInt8>) throws {
        let contiguous = Array(bytes)
        let decoded: Self? = withUnsafePointer(to: Self.descriptor) { descriptor in
            contiguous.withUnsafeBufferPointer { buffer in
                guard let unpacked = protobuf_c_message_unpack(descriptor, nil, buffer.count, buffer.baseAddress) else {
                    return nil
                }
                defer { protobuf_c_message_free_unpacked(unpacked, nil) }
                return Self(reading: UnsafeMutableRawPointer(unpacked), descriptor: descriptor)
            }
        }
        guard let decoded else {
            throw WireDecodingError(messageName: String(cString: Self.descriptor.name))
        }
        self = decoded
    }

    /// Encodes to the protobuf binary form.
    public func serializedBytes() -> [UInt8] {
        withUnsafePointer(to: Self.descriptor) { descriptor in
            let arena = FieldMap.Arena()
            let message = arena.makeMessage(descriptor)
            write(into: message, descriptor: descriptor, arena: arena)
            let cMessage = message.assumingMemoryBound(to: ProtobufCMessage.self)
            let size = protobuf_c_message_get_packed_size(cMessage)
            return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
                count = protobuf_c_message_pack(cMessage, buffer.baseAddress)
            }
        }
    }

    init(reading message: UnsafeMutableRawPointer, descriptor: UnsafePointer<ProtobufCMessageDescriptor>) {
        self.init()
        var fields = FieldMap(message: message, descriptor: descriptor, arena: nil)
        map(&fields)
    }

    func write(into message: UnsafeMutableRawPointer, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, arena: FieldMap.Arena) {
        var copy = self
        var fields = FieldMap(message: message, descriptor: descriptor, arena: arena)
        copy.map(&fields)
    }

    /// Maps this message type, and every message type nested in it, against
    /// protobuf-c's descriptors: each field's number, type, label and message
    /// type must be the ones the `.proto` declares, or this traps naming the
    /// field. The hand-written mirror is checked this way by a test.
    public static func checkMapping() {
        var checked = Set<String>()
        checkMapping(&checked)
    }

    static func checkMapping(_ checked: inout Set<String>) {
        let descriptor = Self.descriptor
        guard checked.insert(String(cString: descriptor.name)).inserted else { return }
        withUnsafePointer(to: descriptor) { descriptor in
            let message = UnsafeMutableRawPointer.allocate(byteCount: descriptor.pointee.sizeof_message, alignment: 16)
            defer { message.deallocate() }
            protobuf_c_message_init(descriptor, message)
            var value = Self()
            var fields = FieldMap(message: message, descriptor: descriptor, arena: nil)
            fields.checkedNested = checked
            value.map(&fields)
            checked = fields.checkedNested ?? checked
        }
    }
}

/// An enum of the API; unknown numbers from the wire read as the zero case.
public protocol WireEnum: RawRepresentable, Sendable, Hashable, CaseIterable where RawValue == Int32 {}

extension WireEnum {
    public static var zero: Self { Self(rawValue: 0) ?? Self.allCases.first! }
}

/// Reads fields out of, or writes them into, one protobuf-c message struct,
/// found by field number through the message's descriptor.
public struct FieldMap {
    /// Owns the C memory of a message being built for encoding.
    final class Arena {
        private var allocations: [UnsafeMutableRawPointer] = []

        deinit { allocations.forEach { free($0) } }

        func allocate(_ size: Int) -> UnsafeMutableRawPointer {
            let pointer = calloc(1, max(size, 1))!
            allocations.append(pointer)
            return pointer
        }

        func makeMessage(_ descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> UnsafeMutableRawPointer {
            let message = allocate(descriptor.pointee.sizeof_message)
            protobuf_c_message_init(descriptor, message)
            return message
        }

        func cString(_ string: String) -> UnsafeMutablePointer<CChar> {
            let utf8 = Array(string.utf8)
            let pointer = allocate(utf8.count + 1)
            pointer.copyMemory(from: utf8, byteCount: utf8.count)
            return pointer.assumingMemoryBound(to: CChar.self)
        }

        func bytes(_ bytes: [UInt8]) -> UnsafeMutablePointer<UInt8> {
            let pointer = allocate(bytes.count)
            pointer.copyMemory(from: bytes, byteCount: bytes.count)
            return pointer.assumingMemoryBound(to: UInt8.self)
        }
    }

    private let message: UnsafeMutableRawPointer
    private let descriptor: UnsafePointer<ProtobufCMessageDescriptor>
    private let arena: Arena?
    /// Set while checking the mapping (`WireMessage.checkMapping`): the message types checked so far; nested ones are checked too.
    fileprivate var checkedNested: Set<String>?

    init(message: UnsafeMutableRawPointer, descriptor: UnsafePointer<ProtobufCMessageDescriptor>, arena: Arena?) {
        self.message = message
        self.descriptor = descriptor
        self.arena = arena
    }

    /// True while decoding, false while encoding.
    public var isReading: Bool { arena == nil }

    // MARK: Scalars

    public mutating func field(_ id: UInt32, _ value: inout String) {
        let field = self.field(id, .string)
        if let arena {
            guard !value.isEmpty || field.isOneofMember else { return }
            store(arena.cString(value), in: field)
        } else {
            let pointer: UnsafePointer<CChar>? = field.isPresent(in: message) ? load(field) : nil
            value = pointer.map { String(cString: $0) } ?? ""
        }
    }

    public mutating func field(_ id: UInt32, _ value: inout [UInt8]) {
        let field = self.field(id, .bytes)
        if let arena {
            guard !value.isEmpty || field.isOneofMember else { return }
            store(ProtobufCBinaryData(len: value.count, data: arena.bytes(value)), in: field)
        } else {
            guard field.isPresent(in: message) else { value = []; return }
            let data: ProtobufCBinaryData = load(field)
            value = data.len == 0 ? [] : Array(UnsafeBufferPointer(start: data.data, count: data.len))
        }
    }

    public mutating func field(_ id: UInt32, _ value: inout Bool) {
        var raw: Int32 = value ? 1 : 0
        scalar(id, &raw, .bool)
        value = raw != 0
    }

    public mutating func field(_ id: UInt32, _ value: inout Int32) {
        scalar(id, &value, .int32)
    }
    public mutating func field(_ id: UInt32, _ value: inout UInt32) { scalar(id, &value, .uint32) }
    public mutating func field(_ id: UInt32, _ value: inout Int64) {
        scalar(id, &value, .int64)
    }
    public mutating func field(_ id: UInt32, _ value: inout UInt64) { scalar(id, &value, .uint64) }

    public mutating func field<E: WireEnum>(_ id: UInt32, _ value: inout E) {
        var raw = value.rawValue
        scalar(id, &raw, .enumeration)
        value = E(rawValue: raw) ?? E.zero
    }

    // MARK: Messages

    public mutating func field<M: WireMessage>(_ id: UInt32, _ value: inout M?) {
        let field = message(id, M.self, repeated: false)
        let nestedDescriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        if let arena {
            guard let value else { return }
            let nested = arena.makeMessage(nestedDescriptor)
            value.write(into: nested, descriptor: nestedDescriptor, arena: arena)
            store(nested, in: field)
        } else {
            let nested: UnsafeMutableRawPointer? = field.isPresent(in: message) ? load(field) : nil
            value = nested.map { M(reading: $0, descriptor: nestedDescriptor) }
        }
    }

    /// A nested message that reads as its default value when absent.
    public mutating func field<M: WireMessage>(_ id: UInt32, _ value: inout M) {
        var optional: M? = value
        field(id, &optional)
        value = optional ?? M()
    }

    // MARK: Repeated

    public mutating func field<M: WireMessage>(_ id: UInt32, _ values: inout [M]) {
        let field = message(id, M.self, repeated: true)
        let nestedDescriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        repeated(field, &values,
                 read: { M(reading: $0!, descriptor: nestedDescriptor) },
                 write: { value, arena in
                     let nested = arena.makeMessage(nestedDescriptor)
                     value.write(into: nested, descriptor: nestedDescriptor, arena: arena)
                     return nested
                 })
    }

    /// The field number set in the oneof that `memberID` belongs to, 0 if none.
    public func oneofCase(of memberID: UInt32) -> UInt32 {
        lookup(memberID).oneofCase(in: message)
    }

    // MARK: Plumbing

    /// Field `id`, which the mirror maps as one of `types` (repeated or not): a
    /// mapping that disagrees with the `.proto` traps at its first use.
    private func field(_ id: UInt32, _ types: TypeSet, repeated: Bool = false) -> UnsafePointer<ProtobufCFieldDescriptor> {
        let field = lookup(id)
        precondition(types.contains(field.pointee.type) && (field.pointee.label == PROTOBUF_C_LABEL_REPEATED) == repeated,
                     "\(String(cString: descriptor.pointee.name)) field \(id) (\(String(cString: field.pointee.name))) "
                     + "is mapped as another type than the .proto's")
        return field
    }

    private func lookup(_ id: UInt32) -> UnsafePointer<ProtobufCFieldDescriptor> {
        guard let field = protobuf_c_message_descriptor_get_field(descriptor, id) else {
            preconditionFailure("\(String(cString: descriptor.pointee.name)) has no field \(id)")
        }
        return field
    }

    /// A message field, checked to hold messages of type `M`; while checking the mapping, `M` is checked too.
    private mutating func message<M: WireMessage>(_ id: UInt32, _: M.Type, repeated: Bool) -> UnsafePointer<ProtobufCFieldDescriptor> {
        let field = self.field(id, .message, repeated: repeated)
        let nested = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
        precondition(nested.pointee.name == M.descriptor.name,
                     "\(String(cString: descriptor.pointee.name)) field \(id) holds \(String(cString: nested.pointee.name)), not \(M.self)")
        if var checked = checkedNested {
            M.checkMapping(&checked)
            checkedNested = checked
        }
        return field
    }


    private func load<T>(_ field: UnsafePointer<ProtobufCFieldDescriptor>) -> T {
        message.load(fromByteOffset: Int(field.pointee.offset), as: T.self)
    }

    private func store<T>(_ value: T, in field: UnsafePointer<ProtobufCFieldDescriptor>) {
        message.storeBytes(of: value, toByteOffset: Int(field.pointee.offset), as: T.self)
        if field.isOneofMember {
            message.storeBytes(of: field.pointee.id, toByteOffset: Int(field.pointee.quantifier_offset), as: UInt32.self)
        }
    }

    private mutating func scalar<T: FixedWidthInteger>(_ id: UInt32, _ value: inout T, _ types: TypeSet) {
        let field = self.field(id, types)
        if arena != nil {
            guard value != 0 || field.isOneofMember else { return }
            store(value, in: field)
        } else {
            value = field.isPresent(in: message) ? load(field) : 0
        }
    }

    private func repeated<T>(
        _ field: UnsafePointer<ProtobufCFieldDescriptor>, _ values: inout [T],
        read: (UnsafeMutableRawPointer?) -> T,
        write: (T, Arena) -> UnsafeMutableRawPointer
    ) {
        let countOffset = Int(field.pointee.quantifier_offset)
        if let arena {
            guard !values.isEmpty else { return }
            let array = arena.allocate(values.count * MemoryLayout<UnsafeMutableRawPointer>.stride)
                .bindMemory(to: UnsafeMutableRawPointer.self, capacity: values.count)
            for (index, value) in values.enumerated() { array[index] = write(value, arena) }
            message.storeBytes(of: values.count, toByteOffset: countOffset, as: Int.self)
            message.storeBytes(of: UnsafeMutableRawPointer(array), toByteOffset: Int(field.pointee.offset), as: UnsafeMutableRawPointer.self)
        } else {
            let count = field.count(in: message)
            guard count > 0, let array: UnsafeMutablePointer<UnsafeMutableRawPointer?> = load(field) else { values = []; return }
            values = (0..<count).map { read(array[$0]) }
        }
    }
}

/// The protobuf-c field types one Swift type of the mirror may map.
struct TypeSet {
    let bits: UInt32

    init(_ types: ProtobufCType...) {
        bits = types.reduce(0) { $0 | 1 << $1.rawValue }
    }

    func contains(_ type: ProtobufCType) -> Bool { bits & 1 << type.rawValue != 0 }

    static let string = TypeSet(PROTOBUF_C_TYPE_STRING)
    static let bytes = TypeSet(PROTOBUF_C_TYPE_BYTES)
    static let bool = TypeSet(PROTOBUF_C_TYPE_BOOL)
    static let int32 = TypeSet(PROTOBUF_C_TYPE_INT32, PROTOBUF_C_TYPE_SINT32, PROTOBUF_C_TYPE_SFIXED32)
    static let uint32 = TypeSet(PROTOBUF_C_TYPE_UINT32, PROTOBUF_C_TYPE_FIXED32)
    static let int64 = TypeSet(PROTOBUF_C_TYPE_INT64, PROTOBUF_C_TYPE_SINT64, PROTOBUF_C_TYPE_SFIXED64)
    static let uint64 = TypeSet(PROTOBUF_C_TYPE_UINT64, PROTOBUF_C_TYPE_FIXED64)
    static let enumeration = TypeSet(PROTOBUF_C_TYPE_ENUM)
    static let message = TypeSet(PROTOBUF_C_TYPE_MESSAGE)
}

/// Where protobuf-c keeps a field's presence and length in its message
/// struct; shared by `FieldMap` and the JSON walker.
extension UnsafePointer where Pointee == ProtobufCFieldDescriptor {
    var isOneofMember: Bool { pointee.flags & PROTOBUF_C_FIELD_FLAG_ONEOF.rawValue != 0 }

    /// The field number set in this member's oneof, 0 if none.
    func oneofCase(in message: UnsafeMutableRawPointer) -> UInt32 {
        message.load(fromByteOffset: Int(pointee.quantifier_offset), as: UInt32.self)
    }

    /// False only for a oneof member other than the one set.
    func isPresent(in message: UnsafeMutableRawPointer) -> Bool {
        !isOneofMember || oneofCase(in: message) == pointee.id
    }

    /// The number of elements of a repeated field.
    func count(in message: UnsafeMutableRawPointer) -> Int {
        message.load(fromByteOffset: Int(pointee.quantifier_offset), as: Int.self)
    }
}
