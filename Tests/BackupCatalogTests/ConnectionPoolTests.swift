import BackupPostgres
import BackupTestSupport
import Foundation
import NIOPosix
import Synchronization
import Testing

/// The pool's driver on a real PostgreSQL: leases queue first come, first
/// served, and the observer hears each queued lease and how long it waited.
@Suite struct ConnectionPoolTests {
    final class Recorder: ConnectionPoolObserver {
        let waits = Mutex<[Duration]>([])
        let queued = Mutex<[Int]>([])
        let opened = Mutex(0)
        func leaseGranted(waited: Duration) { waits.withLock { $0.append(waited) } }
        func leaseQueued(waiting: Int) { queued.withLock { $0.append(waiting) } }
        func connectionOpened() { opened.withLock { $0 += 1 } }
        func connectionClosed() {}
    }

    @Test func waitingLeasesAreServedInTheOrderTheyCameAndReported() async throws {
        let threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        let recorder = Recorder()
        let pool = ConnectionPool(connectionString: TestPostgres.connectionString("postgres"), maximumConnections: 1,
                                  threadPool: threadPool, observer: recorder)
        let order = BackupTestSupport.Atomic<[Int]>([])
        let release = BackupTestSupport.Atomic(false)
        // The one connection, held until the waiters have all queued.
        let holder = Task {
            try await pool.withConnection { connection in
                while !release.value { Thread.sleep(forTimeInterval: 0.005) }
                _ = try connection.query("SELECT 1")
            }
        }
        try await eventually { recorder.opened.withLock { $0 } == 1 }
        var waiters: [Task<Void, any Error>] = []
        for number in 1...5 {
            waiters.append(Task { try await pool.withConnection { _ in order.update { $0.append(number) } } })
            try await eventually { recorder.queued.withLock { $0.count } == number }
        }
        #expect(recorder.queued.withLock { $0 } == [1, 2, 3, 4, 5])
        release.value = true
        try await holder.value
        for waiter in waiters { try await waiter.value }
        #expect(order.value == [1, 2, 3, 4, 5])
        #expect(recorder.opened.withLock { $0 } == 1, "every waiter was handed the one connection")
        #expect(recorder.waits.withLock { $0.count } == 6 && recorder.waits.withLock { $0.dropFirst().allSatisfy { $0 > .zero } })
        await pool.close()
        try await threadPool.shutdownGracefully()
    }

    private func eventually(_ condition: () -> Bool) async throws {
        for _ in 0..<1000 where !condition() { try await Task.sleep(for: .milliseconds(5)) }
        #expect(condition())
    }
}
