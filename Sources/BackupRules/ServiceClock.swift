/// The clock every timer of the server reads and sleeps on. In service it is
/// `ContinuousClock`; tests hand in a `ManualClock` and move time by hand, so
/// leases, grace periods, timeouts and expiry are tested in milliseconds
/// rather than waited out. Its instants are `ContinuousClock`'s, so a pure
/// state machine takes "now" as a plain value whichever clock read it.
public protocol ServiceClock: Clock, Sendable where Instant == ContinuousClock.Instant {}

extension ContinuousClock: ServiceClock {}
