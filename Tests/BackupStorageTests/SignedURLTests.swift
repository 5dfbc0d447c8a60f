import BackupRules
@testable import BackupStorage
import Foundation
import Testing

/// Signed download URLs: what opens, what does not, and keys that rotate
/// without breaking URLs already handed out.
@Suite struct SignedURLTests {
    static let path = "/v1/downloads/0d3e301f-5551-46f8-ad44-8de2be084c95/files_and_database-0d3e301f-202611251200.tar.gz"
    static let secretA = base64URL([UInt8](repeating: 1, count: 32))
    static let secretB = base64URL([UInt8](repeating: 2, count: 48))

    func keys(_ text: String) throws -> URLSigningKeys { try URLSigningKeys(parsing: text) }

    @Test func aSignedURLOpensItsPathUntilItExpires() throws {
        let ring = try keys("# download keys\n2026-11 = \(Self.secretA)\n")
        let query = ring.signedQuery(path: Self.path, expires: 1_000)
        #expect(query.hasPrefix("expires=1000&kid=2026-11&sig="))
        try ring.verify(path: Self.path, query: query, now: 999)
        #expect(throws: URLRefusal.expired) { try ring.verify(path: Self.path, query: query, now: 1_000) }
    }

    @Test func anythingChangedInTheURLBreaksIt() throws {
        let ring = try keys("a = \(Self.secretA)")
        let query = ring.signedQuery(path: Self.path, expires: 1_000)
        let otherPath = Self.path.replacingLast("0d3e301f-202611251200", with: "0d3e301f-202611251201")
        #expect(throws: URLRefusal.badSignature) { try ring.verify(path: otherPath, query: query, now: 0) }
        #expect(throws: URLRefusal.badSignature) {
            try ring.verify(path: Self.path, query: query.replacingLast("expires=1000", with: "expires=9999"), now: 0)
        }
        let sig = String(query.split(separator: "=").last!)
        let flipped = String(sig.prefix(10)) + (sig.dropFirst(10).first == "A" ? "B" : "A") + String(sig.dropFirst(11))
        #expect(throws: URLRefusal.badSignature) { try ring.verify(path: Self.path, query: query.replacingLast(sig, with: flipped), now: 0) }
        // Expired and forged: the forgery is what is said.
        #expect(throws: URLRefusal.badSignature) { try ring.verify(path: otherPath, query: query, now: 5_000) }
    }

    @Test(arguments: [
        "", "expires=1000", "expires=1000&kid=a", "expires=1000&kid=a&sig=abc", "expires=-1&kid=a&sig=" + base64URL([UInt8](repeating: 0, count: 32)),
        "expires=1000&kid=a&sig=" + base64URL([UInt8](repeating: 0, count: 32)) + "&extra=1",
        "expires=1000&expires=1000&kid=a&sig=" + base64URL([UInt8](repeating: 0, count: 32)),
        "expires=10000000000000000000&kid=a&sig=" + base64URL([UInt8](repeating: 0, count: 32)),
        "expires=1000&kid=a&sig=" + base64URL([UInt8](repeating: 0, count: 32)) + "!",
    ])
    func malformedQueriesAreRefused(query: String) throws {
        let ring = try keys("a = \(Self.secretA)")
        #expect(throws: URLRefusal.malformed) { try ring.verify(path: Self.path, query: query, now: 0) }
    }

    /// Helper findings: the same link was accepted in several spellings (a padded
    /// or standard-alphabet signature, an expiry with leading zeros; issue 19: its
    /// three fields in any of six orders).
    @Test func aLinkOpensInExactlyTheSpellingTheServerWrote() throws {
        let ring = try keys("a = \(Self.secretA)")
        let query = ring.signedQuery(path: Self.path, expires: 1_000)
        try ring.verify(path: Self.path, query: query, now: 0)
        let sig = String(query.split(separator: "=").last!)
        let standard = Data(try #require(decodeBase64(sig))).base64EncodedString()
        let fields = query.split(separator: "&").map(String.init)
        let reordered = [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]].map { order in order.map { fields[$0] }.joined(separator: "&") }
        for respelled in [query + "=", query.replacingLast(sig, with: standard), query.replacingLast("expires=1000", with: "expires=01000"),
                          query.replacingLast("expires=1000", with: "expires=+1000")] + reordered where respelled != query {
            #expect(throws: URLRefusal.malformed, "\(respelled)") { try ring.verify(path: Self.path, query: respelled, now: 0) }
        }
    }

    /// Add a key (it signs from then on), keep the old one while its URLs
    /// live, then drop it: no URL breaks before it expires.
    @Test func keysRotateWithoutBreakingURLsAlreadyHandedOut() throws {
        let before = try keys("old = \(Self.secretA)")
        let handedOut = before.signedQuery(path: Self.path, expires: 1_000)
        let during = try keys("old = \(Self.secretA)\nnew = \(Self.secretB)")
        #expect(during.signer.id == "new")
        try during.verify(path: Self.path, query: handedOut, now: 10)
        let fresh = during.signedQuery(path: Self.path, expires: 2_000)
        #expect(fresh.contains("kid=new"))
        let after = try keys("new = \(Self.secretB)")
        try after.verify(path: Self.path, query: fresh, now: 10)
        #expect(throws: URLRefusal.unknownKey) { try after.verify(path: Self.path, query: handedOut, now: 10) }
        // A key id reused with another secret opens nothing signed by the first.
        let impostor = try keys("old = \(Self.secretB)")
        #expect(throws: URLRefusal.badSignature) { try impostor.verify(path: Self.path, query: handedOut, now: 10) }
    }

    /// Across several processes: first every process learns the new key
    /// while the old one still signs (`sign-with`), then the new one signs.
    /// A link signed by any process at any step opens on every other.
    @Test func aRotationInTwoStepsNeverHandsOutALinkAnotherProcessRefuses() throws {
        let steps = [
            try keys("old = \(Self.secretA)"),
            try keys("old = \(Self.secretA)\nnew = \(Self.secretB)\nsign-with old"),
            try keys("# the new key signs\nsign-with new\nold = \(Self.secretA)\nnew = \(Self.secretB)"),
            try keys("old = \(Self.secretA)\nnew = \(Self.secretB)"),
        ]
        #expect(steps.map(\.signer.id) == ["old", "old", "new", "new"])
        // Processes reload one at a time: neighbouring steps run side by side.
        for (signing, checking) in Array(zip(steps.dropFirst(), steps)) + Array(zip(steps, steps.dropFirst())) {
            let query = signing.signedQuery(path: Self.path, expires: 1_000)
            try checking.verify(path: Self.path, query: query, now: 10)
        }
        // Without the first step, a process still on the old file refuses the new key's links.
        #expect(throws: URLRefusal.unknownKey) { try steps[0].verify(path: Self.path, query: steps[3].signedQuery(path: Self.path, expires: 1_000), now: 10) }
    }

    @Test(arguments: [
        ("", "the download key file lists no key"),
        ("sign-with a\na = \(secretA)\nsign-with a", "download key line 3 repeats sign-with"),
        ("a = \(secretA)\nsign-with b", "download key line 2: sign-with names a key id the file does not list"),
        ("a = \(secretA)\nsign-with", "download key line 2: sign-with takes the id of a key listed in the file"),
        ("# nothing\n\n", "the download key file lists no key"),
        ("just-a-secret", "download key line 1 is not KEY_ID = SECRET"),
        ("a = \(base64URL([UInt8](repeating: 1, count: 31)))", "download key line 1: the secret must be base64 of at least 32 bytes"),
        ("a = not base64!", "download key line 1: the secret must be base64 of at least 32 bytes"),
        ("bad id = \(secretA)", "download key line 1: the key id must be 1 to 64 of A-Z a-z 0-9 - _ ."),
        ("a = \(secretA)\n\na = \(secretB)", "download key line 3 repeats a key id listed above"),
    ])
    func badKeyFilesAreRefusedNamingTheLine(text: String, message: String) {
        #expect(throws: BackupError.invalidArgument(message)) { try URLSigningKeys(parsing: text) }
    }

    @Test func secretsReadInEitherBase64Alphabet() throws {
        let bytes = (0..<40).map { UInt8($0 * 6) }
        let url = base64URL(bytes)
        let standard = url.replacingAll("-", with: "+").replacingAll("_", with: "/") + "=="
        #expect(decodeBase64(url) == bytes)
        #expect(decodeBase64(standard) == bytes)
        #expect(decodeBase64("QQ=") == [65])
        #expect(decodeBase64("QR") == nil)  // bits left over that an encoder never leaves
        #expect(decodeBase64("Q") == nil)
    }
}

extension String {
    func replacingLast(_ target: String, with replacement: String) -> String {
        guard let range = range(of: target, options: .backwards) else { return self }
        return replacingCharacters(in: range, with: replacement)
    }

    func replacingAll(_ target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
