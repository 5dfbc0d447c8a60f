import BackupStorage
import Testing

/// The waits between tries of an object-store request: doubling from the
/// base, capped, and a random share of that (full jitter).
@Suite struct RetryPolicyTests {
    @Test(arguments: [
        // (try, unit, wait in ms) for a base of 200 ms and a cap of 5 s
        (2, 1.0, 200), (3, 1.0, 400), (4, 1.0, 800), (5, 1.0, 1600), (6, 1.0, 3200), (7, 1.0, 5000), (40, 1.0, 5000),
        (2, 0.0, 0), (4, 0.5, 400), (7, 0.25, 1250), (1, 1.0, 200), (3, 2.0, 400), (3, -1.0, 0),
    ])
    func theWaitBeforeATryIsAJitteredShareOfACappedDoubling(attempt: Int, unit: Double, milliseconds: Int) {
        #expect(RetryPolicy().delay(beforeTry: attempt, unit: unit) == .milliseconds(milliseconds))
    }
}
