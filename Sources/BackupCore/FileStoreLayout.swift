/// Where a file document lives in an app's file store: the storage key (a
/// UUID) in two folders named by its characters 1-2 and 3-4, as
/// `0d/3e/0d3e301f-5551-46f8-ad44-8de2be084c95`.
public enum FileStoreLayout {
    public struct InvalidKey: Error, CustomStringConvertible {
        public let key: String
        public var description: String {
            "file storage key \"\(key)\" is not a storage key (4 to 200 characters of letters, digits, '-' or '_')"
        }
    }

    /// The path of a file document relative to its file store. Keys come from
    /// the app database, so anything that could climb out of the store is refused.
    public static func relativePath(forKey key: String) throws(InvalidKey) -> String {
        let allowed = key.utf8.allSatisfy { byte in
            (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || byte == 45 || byte == 95
        }
        guard allowed, (4...200).contains(key.utf8.count) else { throw InvalidKey(key: key) }
        let characters = Array(key)
        return "\(String(characters[0..<2]))/\(String(characters[2..<4]))/\(key)"
    }
}
