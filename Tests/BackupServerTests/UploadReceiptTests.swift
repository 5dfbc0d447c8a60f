import BackupRules
@testable import BackupServer
import Testing

/// One call's receipt of an upload, one table per rule: each row is an event
/// and what it must answer. No catalog, no disk, no clock: times are offsets.
@Suite struct UploadReceiptTests {
    typealias Machine = UploadReceipt
    typealias Count = Machine.Count

    enum Event {
        case chunk(upload: String = "u1", offset: UInt64, length: Int)
        case written(at: Duration = .zero)
        case counted(to: UInt64, at: Duration = .zero)
        case leaseLost
        case ended(at: Duration = .zero)
    }

    enum Answer: Equatable {
        case write, refused(BackupError), count(Count?), none
    }

    struct Row {
        let event: Event
        let answer: Answer
        init(_ event: Event, _ answer: Answer = .none) {
            self.event = event
            self.answer = answer
        }
    }

    static let start = ContinuousClock.now

    @discardableResult
    func run(size: UInt64 = 100, counted: UInt64 = 0, smallSegments: Int = 0, _ rows: [Row],
             sourceLocation: SourceLocation = #_sourceLocation) -> Machine {
        var machine = Machine(uploadID: "u1", size: size, counted: counted, smallSegments: smallSegments, now: Self.start)
        for (index, row) in rows.enumerated() {
            let answer: Answer
            switch row.event {
            case .chunk(let upload, let offset, let length):
                answer = machine.chunk(uploadID: upload, offset: offset, length: length).map { .refused($0) } ?? .write
            case .written(let at): answer = .count(machine.written(now: Self.start + at))
            case .counted(let to, let at):
                machine.counted(to: to, now: Self.start + at)
                answer = .none
            case .leaseLost: answer = .refused(machine.writerLeaseLost())
            case .ended(let at): answer = .count(machine.ended(now: Self.start + at))
            }
            #expect(answer == row.answer, "row \(index + 1): \(row.event)", sourceLocation: sourceLocation)
        }
        return machine
    }

    @Test func chunksInOrderAreWrittenAndTheLastByteIsCountedWithItsHashChecked() {
        let machine = run([
            Row(.chunk(offset: 0, length: 40), .write),
            Row(.written(), .count(nil)),
            Row(.chunk(offset: 40, length: 60), .write),
            Row(.written(), .count(Count(from: 0, to: 100, complete: true))),
            Row(.counted(to: 100)),
            // Past the last byte, whatever its offset.
            Row(.chunk(offset: 100, length: 1),
                .refused(.outOfRange("chunk at offset 100 goes past the upload's announced size of 100 bytes"))),
            Row(.ended(), .count(nil)),
        ])
        #expect(machine.isComplete)
    }

    @Test func writtenBytesCountInBatchesOfSixtyFourMebibytesOrASecondsWorthOfOne() {
        let mebibyte = 1 << 20
        run(size: 200 << 20, [
            Row(.chunk(offset: 0, length: 63 * mebibyte), .write),
            Row(.written(at: .milliseconds(500)), .count(nil)),
            Row(.chunk(offset: 63 << 20, length: mebibyte), .write),
            Row(.written(at: .milliseconds(600)), .count(Count(from: 0, to: 64 << 20, complete: false))),
            Row(.counted(to: 64 << 20, at: .milliseconds(700))),
            Row(.chunk(offset: 64 << 20, length: 10), .write),
            Row(.written(at: .milliseconds(1_699)), .count(nil)),
            // A second since the last count, but less than a mebibyte waiting: a slow client's count waits for one.
            Row(.chunk(offset: (64 << 20) + 10, length: 10), .write),
            Row(.written(at: .milliseconds(1_700)), .count(nil)),
            Row(.chunk(offset: (64 << 20) + 20, length: mebibyte - 20), .write),
            Row(.written(at: .milliseconds(1_800)), .count(Count(from: 64 << 20, to: 65 << 20, complete: false))),
        ])
    }

    /// A call's end counts its last bytes under a mebibyte while the upload
    /// has fewer than 256 such small segments (each is an object in the
    /// store); past them only a mebibyte or the last byte counts, and the
    /// client sends the rest again.
    @Test func smallSegmentsAtACallsEndAreFewPerUpload() {
        let (mebibyte, share) = (1 << 20, Machine.smallSegmentsPerUpload)
        run(size: 10 << 20, smallSegments: share - 1, [
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.ended(), .count(Count(from: 0, to: 10, complete: false))),
        ])
        run(size: 10 << 20, smallSegments: share, [
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.ended(), .count(nil)),
        ])
        run(size: 10 << 20, smallSegments: share, [
            Row(.chunk(offset: 0, length: mebibyte), .write), Row(.written(), .count(nil)),
            Row(.ended(), .count(Count(from: 0, to: 1 << 20, complete: false))),
        ])
        run(size: 100, counted: 90, smallSegments: share, [
            Row(.chunk(offset: 90, length: 10), .write), Row(.written(), .count(Count(from: 90, to: 100, complete: true))),
        ])
    }

    @Test func aChunkOutOfPlaceIsRefusedNamingTheOffsetExpected() {
        run(counted: 30, [
            Row(.chunk(offset: 0, length: 10), .refused(.outOfRange("chunk at offset 0, but upload u1 expects offset 30"))),
        ])
        run([Row(.chunk(offset: 0, length: 0), .refused(.invalidArgument("a chunk must carry data; this one is empty")))])
        run([Row(.chunk(offset: 0, length: 101),
                 .refused(.outOfRange("chunk of 101 bytes at offset 0 goes past the upload's announced size of 100 bytes")))])
        run([Row(.chunk(upload: "u2", offset: 0, length: 1),
                 .refused(.invalidArgument("a call sends the chunks of one upload; it began with u1, not u2")))])
    }

    @Test func theChunksOfACallCutOffOrRefusedCountWhenItEnds() {
        // Cut off after two whole chunks, neither counted yet: both count.
        run([
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.chunk(offset: 10, length: 10), .write), Row(.written(), .count(nil)),
            Row(.ended(), .count(Count(from: 0, to: 20, complete: false))),
            Row(.ended(), .count(nil)),
        ])
        // Refused after a whole chunk: the chunk counts, the refusal is the answer.
        run([
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.chunk(offset: 5, length: 10), .refused(.outOfRange("chunk at offset 5, but upload u1 expects offset 10"))),
            Row(.ended(), .count(Count(from: 0, to: 10, complete: false))),
        ])
        // A write that failed (a full disk) counts nothing of its chunk.
        run([
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.chunk(offset: 10, length: 10), .write),
            Row(.ended(), .count(Count(from: 0, to: 10, complete: false))),
        ])
    }

    @Test func anUploadExpiredOrTakenWhileACallWritesItCountsNothingMoreFromThatCall() {
        run([
            Row(.chunk(offset: 0, length: 10), .write), Row(.written(), .count(nil)),
            Row(.chunk(offset: 10, length: 10), .write),
            Row(.leaseLost, .refused(.aborted("upload u1 is no longer this call's to write (its lease ran out, or it expired); "
                                              + "ask GetUpload where to go on"))),
            Row(.ended(), .count(nil)),
        ])
    }
}
