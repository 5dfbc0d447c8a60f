import BackupRules
import Foundation
import Testing

struct SecretTests {
    private struct Settings: Encodable {
        var name = "signing"
        var key = Secret<[UInt8]>([0xde, 0xad, 0xbe, 0xef])
        var password = Secret("hunter2-\u{1F511}")
    }

    /// Every way Swift turns a value into text: none shows the secret, and the value is still there for its user.
    @Test func aSecretIsRedactedInEveryPrintedForm() throws {
        let settings = Settings()
        var dumped = ""
        dump(settings, to: &dumped)
        let encoded = String(decoding: try JSONEncoder().encode(settings), as: UTF8.self)
        let forms = [
            "\(settings)", String(describing: settings), String(reflecting: settings), dumped, encoded,
            "\(settings.password)", String(reflecting: settings.key), "\([settings.password])",
            Mirror(reflecting: settings.password).children.map { "\($0)" }.joined(),
        ]
        for form in forms {
            #expect(!form.contains("hunter2") && !form.contains("222") && !form.contains("173") && !form.lowercased().contains("dead"),
                    "\(form)")
        }
        #expect("\(settings)".contains("<redacted>") && encoded.contains("<redacted>") && dumped.contains("signing"))
        #expect(settings.password.revealed == "hunter2-\u{1F511}" && settings.key.revealed == [0xde, 0xad, 0xbe, 0xef])
    }
}
