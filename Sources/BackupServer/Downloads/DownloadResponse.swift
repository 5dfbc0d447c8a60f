import BackupRules
import BackupStorage
import Foundation

/// What a GET or HEAD of a ready download answers with: which bytes of the
/// file, and the headers a browser (or `curl -C -`) needs to save it and to
/// resume a broken transfer. Pure: the endpoint reads the request's headers,
/// asks this, and streams what it says.
package struct DownloadResponse: Equatable {
    /// Which bytes go out.
    package enum Body: Equatable {
        /// 200: the whole file.
        case whole
        /// 206: bytes `first` through `last`, inclusive.
        case part(first: UInt64, last: UInt64)
        /// 416: the range asked for lies outside the file.
        case unsatisfiable
    }

    package let body: Body
    package let headers: [(name: String, value: String)]

    package static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.body == rhs.body && lhs.headers.elementsEqual(rhs.headers) { $0 == $1 }
    }

    package var status: Int {
        switch body {
        case .whole: 200
        case .part: 206
        case .unsatisfiable: 416
        }
    }

    /// The file this answers for: its name, size, content hash (the strong
    /// ETag) and when it became ready (Unix seconds, `Last-Modified`).
    package struct File {
        package let name: String
        package let size: UInt64
        package let sha256: String
        package let modified: Int64

        package init(name: String, size: UInt64, sha256: String, modified: Int64) {
            (self.name, self.size, self.sha256, self.modified) = (name, size, sha256, modified)
        }

        var etag: String { "\"\(sha256)\"" }
        var lastModified: String { httpDate(modified) }
    }

    /// The answer to a request with these `Range` and `If-Range` header values.
    package init(for file: File, range: String?, ifRange: String?) {
        let body: Body = if let range, Self.rangeApplies(ifRange, to: file) { Self.body(forRange: range, size: file.size) } else { .whole }
        var headers: [(String, String)] = [
            ("Content-Type", file.name.hasSuffix(".tar.gz") ? "application/gzip" : "application/octet-stream"),
            ("Content-Disposition", "attachment; filename=\"\(file.name)\""),
            ("ETag", file.etag),
            ("Last-Modified", file.lastModified),
            ("Accept-Ranges", "bytes"),
            ("Cache-Control", "private, no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        switch body {
        case .whole:
            headers.append(("Content-Length", String(file.size)))
        case let .part(first, last):
            headers.append(("Content-Length", String(last - first + 1)))
            headers.append(("Content-Range", "bytes \(first)-\(last)/\(file.size)"))
        case .unsatisfiable:
            headers.append(("Content-Length", "0"))
            headers.append(("Content-Range", "bytes */\(file.size)"))
        }
        self.body = body
        self.headers = headers
    }

    /// `If-Range` lets a range through only while the file is the one the
    /// client has part of: its strong ETag, or exactly its modification date.
    private static func rangeApplies(_ ifRange: String?, to file: File) -> Bool {
        guard let ifRange = ifRange?.trimmingCharacters(in: .whitespaces) else { return true }
        return ifRange.hasPrefix("\"") ? ifRange == file.etag : ifRange == file.lastModified
    }

    /// A single `bytes=` range (RFC 9110 §14.1.2). Anything else, several
    /// ranges included, is ignored and the whole file goes out, as the RFC
    /// allows; a well-formed range that starts past the end is unsatisfiable.
    private static func body(forRange header: String, size: UInt64) -> Body {
        let value = header.trimmingCharacters(in: .whitespaces)
        guard value.hasPrefix("bytes="), !value.contains(",") else { return .whole }
        let spec = value.dropFirst("bytes=".count)
        guard let dash = spec.firstIndex(of: "-") else { return .whole }
        let (firstText, lastText) = (spec[..<dash], spec[spec.index(after: dash)...])
        func number(_ text: Substring) -> UInt64? {
            text.isEmpty || text.count > 19 || !text.utf8.allSatisfy({ (48...57).contains($0) }) ? nil : UInt64(text)
        }
        if firstText.isEmpty {
            // The last N bytes.
            guard let suffix = number(lastText) else { return .whole }
            guard suffix > 0, size > 0 else { return .unsatisfiable }
            return .part(first: size - min(suffix, size), last: size - 1)
        }
        guard let first = number(firstText) else { return .whole }
        let last: UInt64
        if lastText.isEmpty {
            last = .max
        } else {
            guard let given = number(lastText), given >= first else { return .whole }
            last = given
        }
        guard first < size else { return .unsatisfiable }
        return .part(first: first, last: min(last, size - 1))
    }
}

/// An HTTP date (IMF-fixdate, RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
func httpDate(_ unix: Int64) -> String {
    utcTime(unix, format: "%a, %d %b %Y %H:%M:%S GMT")
}
