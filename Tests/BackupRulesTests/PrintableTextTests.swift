import BackupRules
import Testing

/// What the server echoes of a client's text (a name, an archive member, a
/// time zone) in a message or a log line.
struct PrintableTextTests {
    /// Helper finding: a name with a right-to-left override or a zero-width
    /// space came back as it was sent, and one of 100,000 bytes came back whole.
    @Test func controlsAndInvisibleFormattingAreShownAsQuestionMarks() {
        #expect(printable("a\nb\u{1B}[2Jc", longest: 64) == "a?b?[2Jc")
        #expect(printable("gpj.\u{202E}exe\u{200B}\u{2028}", longest: 64) == "gpj.?exe??")
        #expect(printable("åcmé-прод", longest: 64) == "åcmé-прод")
        #expect(quotedPrintable(String(repeating: "x", count: 100_000), longest: 64) == "\"" + String(repeating: "x", count: 64) + "…\"")
        #expect(printable("", longest: 64) == "")
    }
}
