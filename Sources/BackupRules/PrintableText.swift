/// Text a client or a file sent, as an error message or a log line shows
/// it: at most `longest` characters (then "…"), and every character that
/// is not plain text as `?`: controls (a newline, an escape that would
/// forge a log line or repaint a terminal) and invisible formatting (a
/// right-to-left override or a zero-width space that would make a name
/// look like another). One rule for every place that echoes such text.
public func printable(_ text: String, longest: Int) -> String {
    let shown = text.unicodeScalars.prefix(longest).map { isPlainText($0) ? Character($0) : "?" }
    return String(shown) + (text.unicodeScalars.count > longest ? "…" : "")
}

/// `printable`, in double quotes.
public func quotedPrintable(_ text: String, longest: Int) -> String {
    "\"\(printable(text, longest: longest))\""
}

private func isPlainText(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.properties.generalCategory {
    case .control, .format, .lineSeparator, .paragraphSeparator, .privateUse, .surrogate, .unassigned: false
    default: true
    }
}
