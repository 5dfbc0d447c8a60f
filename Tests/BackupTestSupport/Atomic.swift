import Foundation

/// A value shared between a test and the threads it starts.
public final class Atomic<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    public init(_ value: Value) { stored = value }

    public var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }

    /// Changes the value under the lock, for read-modify-write from several threads.
    public func update(_ change: (inout Value) -> Void) {
        lock.withLock { change(&stored) }
    }
}
