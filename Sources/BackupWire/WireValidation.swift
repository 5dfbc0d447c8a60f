import BackupProto
import CProtobufC

/// A field of a received message that breaks the contract of the API: a NUL
/// byte or invalid UTF-8 in a string, a string over its limit, an enum value
/// the API does not define. protobuf-c would decode such a message anyway
/// (cutting a string at its NUL, keeping an unknown enum number), so every
/// request is checked on its raw bytes before it is decoded.
public struct WireViolation: Error, Equatable, CustomStringConvertible {
    /// The field's proto name, with the names of the messages it is in.
    public let field: String
    public let problem: String
    public var description: String { "\(field) \(problem)" }
}

/// The longest value, in bytes, that each string field of a request may
/// have. Responses may only carry what requests let in, so these limits
/// also bound every list a response holds.
public enum WireLimits {
    public static let comment = 4096
    public static let name = 128
    public static let appOrVersion = 256
    public static let location = 4096
    public static let other = 1024

    public static func maximumBytes(ofStringField name: String) -> Int {
        switch name {
        case "comment": comment
        case "database_url", "file_store_path", "file_query", "value": location
        case "namespace", "name", "environment", "target_namespace", "target_environment", "key",
             "id", "backup_id", "upload_id", "job_id", "page_token", "sha256", "window_start", "time_zone": Self.name
        case "app", "package_version", "method", "filename": appOrVersion
        default: other
        }
    }
}

extension WireMessage {
    /// Decodes a message received from a client, refusing what breaks the
    /// API's contract (see `WireViolation`) before protobuf-c sees it.
    public init(validating bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { buffer in
            try withUnsafePointer(to: Self.descriptor) { descriptor in
                try validateMessage(buffer, descriptor, path: "")
            }
        }
        try self.init(serializedBytes: bytes)
    }
}

/// Checks `start` frames on their bytes, so a call whose metadata breaks the
/// contract is refused rather than run with a string protobuf-c cut short.
func violation(inFrame bytes: [UInt8]) -> WireViolation? {
    do {
        try bytes.withUnsafeBytes { buffer in
            try withUnsafePointer(to: Frame.descriptor) { try validateMessage(buffer, $0, path: "") }
        }
        return nil
    } catch let violation as WireViolation {
        return violation
    } catch {
        return nil
    }
}

/// Walks the protobuf encoding of one message. Malformed encodings are left
/// to protobuf-c, which refuses them when it decodes.
private func validateMessage(_ bytes: UnsafeRawBufferPointer, _ descriptor: UnsafePointer<ProtobufCMessageDescriptor>,
                             path: String) throws {
    var reader = WireReader(bytes: bytes)
    while !reader.atEnd {
        guard let tag = reader.varint() else { return }
        let number = UInt32(truncatingIfNeeded: tag >> 3)
        let field = protobuf_c_message_descriptor_get_field(descriptor, number)
        let name = field.map { path + String(cString: $0.pointee.name) } ?? ""
        switch tag & 7 {
        case 0:
            guard let value = reader.varint() else { return }
            if let field, field.pointee.type == PROTOBUF_C_TYPE_ENUM {
                try checkEnum(Int32(truncatingIfNeeded: value), field, name: name)
            } else if let field, field.pointee.type == PROTOBUF_C_TYPE_UINT32, value > UInt64(UInt32.max) {
                // protobuf-c would keep the low 32 bits: 2^32 + 1 would read as 1.
                throw WireViolation(field: name, problem: "is \(value), above the largest uint32")
            }
        case 1: guard reader.skip(8) else { return }
        case 5: guard reader.skip(4) else { return }
        case 2:
            guard let length = reader.varint(), let value = reader.take(Int(clamping: length)) else { return }
            guard let field else { continue }
            switch field.pointee.type {
            case PROTOBUF_C_TYPE_STRING: try checkString(value, name: name)
            case PROTOBUF_C_TYPE_MESSAGE:
                let nested = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCMessageDescriptor.self)
                try validateMessage(value, nested, path: name + ".")
            case PROTOBUF_C_TYPE_ENUM:  // packed repeated enum
                var packed = WireReader(bytes: value)
                while !packed.atEnd, let element = packed.varint() { try checkEnum(Int32(truncatingIfNeeded: element), field, name: name) }
            default: continue
            }
        default: return
        }
    }
}

private func checkString(_ value: UnsafeRawBufferPointer, name: String) throws {
    let fieldName = String(name.split(separator: ".").last ?? Substring(name))
    let limit = WireLimits.maximumBytes(ofStringField: fieldName)
    guard value.count <= limit else {
        throw WireViolation(field: name, problem: "is \(value.count) bytes long; the limit is \(limit) bytes")
    }
    guard !value.contains(0) else { throw WireViolation(field: name, problem: "contains a NUL byte") }
    guard let text = String(validating: value.bindMemory(to: UInt8.self), as: UTF8.self) else {
        throw WireViolation(field: name, problem: "is not valid UTF-8")
    }
    // Line breaks and tabs belong in a comment or a query; no other control character belongs anywhere.
    let textual = fieldName == "comment" || fieldName == "file_query"
    if let control = text.unicodeScalars.first(where: { $0.properties.generalCategory == .control && !(textual && ($0 == "\n" || $0 == "\t" || $0 == "\r")) }) {
        throw WireViolation(field: name, problem: "contains the control character U+\(String(control.value, radix: 16, uppercase: true).leftPadded(to: 4))")
    }
}

private func checkEnum(_ value: Int32, _ field: UnsafePointer<ProtobufCFieldDescriptor>, name: String) throws {
    let enumDescriptor = field.pointee.descriptor.assumingMemoryBound(to: ProtobufCEnumDescriptor.self)
    guard protobuf_c_enum_descriptor_get_value(enumDescriptor, value) != nil else {
        throw WireViolation(field: name, problem: "has value \(value), which \(String(cString: enumDescriptor.pointee.name)) does not define")
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}

/// Reads varints and length-delimited slices of a protobuf encoding.
private struct WireReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    var atEnd: Bool { offset >= bytes.count }

    mutating func varint() -> UInt64? {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 70, by: 7) {
            guard offset < bytes.count else { return nil }
            let byte = bytes[offset]
            offset += 1
            if shift < 64 { value |= UInt64(byte & 0x7f) << UInt64(shift) }
            if byte & 0x80 == 0 { return value }
        }
        return nil
    }

    mutating func skip(_ count: Int) -> Bool {
        guard count <= bytes.count - offset else { return false }
        offset += count
        return true
    }

    mutating func take(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= bytes.count - offset else { return nil }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count])
    }
}
