import BackupRules
import Testing

/// One rule for every capacity namespaces share: job slots, the archive
/// cache, the upload spool.
@Suite struct NamespaceShareTests {
    @Test func aShareIsAboveNothingAndAtMostTheWhole() {
        for refused in [0, -0.5, 1.01, .nan, .infinity] { #expect(NamespaceShare(refused) == nil, "\(refused)") }
        for taken in [0.01, 0.5, 1] { #expect(NamespaceShare(taken)?.fraction == taken) }
    }

    @Test func bytesAreCutDownAndSlotsAreAtLeastOne() {
        struct Row { let fraction: Double, capacity: UInt64, bytes: UInt64, slots: Int, slotShare: Int }
        let rows = [
            Row(fraction: 0.5, capacity: 1_000_001, bytes: 500_000, slots: 2, slotShare: 1),
            Row(fraction: 0.5, capacity: 0, bytes: 0, slots: 1, slotShare: 1),
            Row(fraction: 0.3, capacity: 10, bytes: 3, slots: 10, slotShare: 3),
            Row(fraction: 0.01, capacity: 99, bytes: 0, slots: 4, slotShare: 1),
            Row(fraction: 1, capacity: UInt64(1) << 40, bytes: UInt64(1) << 40, slots: 7, slotShare: 7),
        ]
        for row in rows {
            let share = NamespaceShare(row.fraction)!
            #expect(share.of(row.capacity) == row.bytes, "\(row.fraction) of \(row.capacity)")
            #expect(share.of(slots: row.slots) == row.slotShare, "\(row.fraction) of \(row.slots) slots")
        }
    }
}
