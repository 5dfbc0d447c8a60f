import CProtobufC
import Foundation

extension WireMessage {
    /// The message as a JSON object, walked through its protobuf-c
    /// descriptor: proto field names, enum values by name, bytes as base64.
    /// Fields at their default value are left out, as in proto3 JSON.
    public func jsonObject() -> [String: Any] {
        withUnsafePointer(to: Self.descriptor) { descriptor in
            let arena = FieldMap.Arena()
            let message = arena.makeMessage(descriptor)
            write(into: message, descriptor: descriptor, arena: arena)
            return BackupWire.jsonObject(message, descriptor)
        }
    }

    /// Pretty-printed JSON text with sorted keys.
    public func jsonText() -> String {
        let data = try! JSONSerialization.data(withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

private func jsonObject(_ message: UnsafeMutableRawPointer, _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>) -> [String: Any] {
    var object: [String: Any] = [:]
    for index in 0..<Int(descriptor.pointee.n_fields) {
        let field = descriptor.pointee.fields.advanced(by: index)
        let name = String(cString: field.pointee.name)
        let offset = Int(field.pointee.offset)
        guard field.isPresent(in: message) else { continue }
        if field.pointee.label.rawValue == CType.repeatedLabel {
            let count = field.count(in: message)
            guard count > 0, let array = message.load(fromByteOffset: offset, as: UnsafeMutableRawPointer?.self) else { continue }
            let stride = jsonValueStride(field)
            object[name] = (0..<count).compactMap { jsonValue(array + $0 * stride, field) }
        } else if let value = jsonValue(message + offset, field), !isDefault(value) {
            object[name] = value
        }
    }
    return object
}

/// protobuf-c's ProtobufCType and ProtobufCLabel numbers, which Swift
/// imports without their constant names.
private enum CType {
    static let int32: UInt32 = 0, sint32: UInt32 = 1, sfixed32: UInt32 = 2, int64: UInt32 = 3, sint64: UInt32 = 4
    static let sfixed64: UInt32 = 5, uint32: UInt32 = 6, fixed32: UInt32 = 7, uint64: UInt32 = 8, fixed64: UInt32 = 9
    static let float: UInt32 = 10, double: UInt32 = 11, bool: UInt32 = 12, `enum`: UInt32 = 13, string: UInt32 = 14
    static let bytes: UInt32 = 15, message: UInt32 = 16
    static let repeatedLabel: UInt32 = 2
}

private func jsonValueStride(_ field: UnsafePointer<ProtobufCFieldDescriptor>) -> Int {
    switch field.pointee.type.rawValue {
    case CType.int64, CType.uint64, CType.sint64, CType.fixed64,
         CType.sfixed64, CType.double: 8
    case CType.string, CType.message: MemoryLayout<UnsafeRawPointer>.stride
    case CType.bytes: MemoryLayout<ProtobufCBinaryData>.stride
    default: 4
    }
}

private func jsonValue(_ address: UnsafeMutableRawPointer, _ field: UnsafePointer<ProtobufCFieldDescriptor>) -> Any? {
    switch field.pointee.type.rawValue {
    case CType.string:
        return address.load(as: UnsafePointer<CChar>?.self).map { String(cString: $0) } ?? ""
    case CType.bytes:
        let data = address.load(as: ProtobufCBinaryData.self)
        return data.len == 0 ? "" : Data(bytes: data.data, count: data.len).base64EncodedString()
    case CType.bool:
        return address.load(as: Int32.self) != 0
    case CType.int32, CType.sint32, CType.sfixed32:
        return address.load(as: Int32.self)
    case CType.uint32, CType.fixed32:
        return address.load(as: UInt32.self)
    case CType.int64, CType.sint64, CType.sfixed64:
        return address.load(as: Int64.self)
    case CType.uint64, CType.fixed64:
        return address.load(as: UInt64.self)
    case CType.`enum`:
        let raw = address.load(as: Int32.self)
        let enumDescriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCEnumDescriptor.self)
        return protobuf_c_enum_descriptor_get_value(enumDescriptor, raw).map { String(cString: $0.pointee.name) } ?? raw
    case CType.message:
        guard let nested = address.load(as: UnsafeMutableRawPointer?.self) else { return nil }
        return jsonObject(nested, field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self))
    default:
        return nil
    }
}

private func isDefault(_ value: Any) -> Bool {
    switch value {
    case let string as String: string.isEmpty
    case let bool as Bool: !bool
    case let number as any BinaryInteger: number.isZero
    default: false
    }
}

private extension BinaryInteger {
    var isZero: Bool { self == .zero }
}
