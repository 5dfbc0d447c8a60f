import BackupPostgres
import BackupWire
import CoreMetrics
import Metrics
import Prometheus
import Synchronization

/// What backupd counts and measures, for the admin listener's `/metrics`.
/// Components record through swift-metrics (counters, timers, gauges) made
/// by this object's Prometheus factory, not the process-wide
/// `MetricsSystem`, so every server (several in one test process) keeps a
/// registry of its own. Values that describe state rather than events (open
/// connections, the catalog's queue and environments) are set when a
/// scrape asks, by the samplers components register, from what they hold.
///
/// Labels take only values backupd chose (a route's method name, a status,
/// a job kind) or the catalog holds (a namespace and environment): never a
/// string a client sent, so no caller can grow the registry.
public final class ServiceMetrics: Sendable, ConnectionPoolObserver {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    private let samplers = Mutex<[UInt64: @Sendable () -> Void]>([:])
    private let nextSampler = Atomic<UInt64>(0)

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Calls and requests take milliseconds to minutes (a watch, a download); jobs, seconds to hours.
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(5), .seconds(30), .seconds(120), .seconds(600),
        ]
        factory.durationHistogramBuckets[Name.jobDuration] = [
            .seconds(1), .seconds(5), .seconds(15), .seconds(60), .seconds(300), .seconds(900), .seconds(1800), .seconds(3600),
            .seconds(3 * 3600), .seconds(6 * 3600),
        ]
        self.factory = factory
        gauge(Name.buildInfo, dimensions: [("version", BuildInfo.version), ("commit", BuildInfo.commit)]).record(1)
    }

    /// The names of the metrics, as `docs/operations.md` lists them.
    enum Name {
        static let buildInfo = "backupd_build_info"
        static let rpcCalls = "backupd_rpc_calls_total"
        static let rpcDuration = "backupd_rpc_call_duration_seconds"
        static let rpcBytesIn = "backupd_rpc_received_bytes_total"
        static let rpcBytesOut = "backupd_rpc_sent_bytes_total"
        static let httpRequests = "backupd_http_requests_total"
        static let httpBytesOut = "backupd_http_sent_bytes_total"
        static let httpDuration = "backupd_http_request_duration_seconds"
        static let jobsEnded = "backupd_jobs_ended_total"
        static let jobDuration = "backupd_job_duration_seconds"
        static let jobsRunning = "backupd_jobs_running"
        static let connectionsOpen = "backupd_connections_open"
        static let callsOpen = "backupd_rpc_calls_open"
        static let receivePoolBytes = "backupd_receive_pool_bytes_in_use"
        static let catalogLeaseWait = "backupd_catalog_lease_wait_seconds"
        static let catalogConnectionsOpen = "backupd_catalog_connections_open"
        static let catalogConnectionsLeased = "backupd_catalog_connections_leased"
        static let catalogLeasesWaiting = "backupd_catalog_leases_waiting"
        static let certificateExpiry = "backupd_tls_certificate_expiry_timestamp_seconds"
        static let ready = "backupd_ready"
    }

    // MARK: Events

    /// An RPC call ended. `method` is a route's name, or "unknown".
    func callEnded(method: String, code: StatusCode, duration: Duration, bytesIn: Int, bytesOut: Int) {
        let labels = [("method", method), ("code", code.description)]
        CoreMetrics.Counter(label: Name.rpcCalls, dimensions: labels, factory: factory).increment()
        CoreMetrics.Timer(label: Name.rpcDuration, dimensions: labels, factory: factory).record(duration: duration)
        CoreMetrics.Counter(label: Name.rpcBytesIn, dimensions: [("method", method)], factory: factory).increment(by: bytesIn)
        CoreMetrics.Counter(label: Name.rpcBytesOut, dimensions: [("method", method)], factory: factory).increment(by: bytesOut)
    }

    /// An HTTP request (a download, or a refusal) was answered.
    func requestAnswered(status: Int, bytesOut: UInt64, duration: Duration) {
        let labels = [("code", "\(status)")]
        CoreMetrics.Counter(label: Name.httpRequests, dimensions: labels, factory: factory).increment()
        CoreMetrics.Counter(label: Name.httpBytesOut, dimensions: labels, factory: factory).increment(by: Int(clamping: bytesOut))
        CoreMetrics.Timer(label: Name.httpDuration, dimensions: labels, factory: factory).record(duration: duration)
    }

    /// A job this process ran ended: finished, failed, cancelled, or (a restore) deferred to recovery.
    func jobEnded(kind: String, outcome: String, duration: Duration) {
        let labels = [("kind", kind), ("outcome", outcome)]
        CoreMetrics.Counter(label: Name.jobsEnded, dimensions: labels, factory: factory).increment()
        CoreMetrics.Timer(label: Name.jobDuration, dimensions: labels, factory: factory).record(duration: duration)
    }

    // MARK: ConnectionPoolObserver (the catalog's pool)

    public func leaseGranted(waited: Duration) {
        CoreMetrics.Timer(label: Name.catalogLeaseWait, factory: factory).record(duration: waited)
    }

    public func leaseQueued(waiting: Int) {}
    public func connectionOpened() {}
    public func connectionClosed() {}

    // MARK: State, read at scrape time

    /// A gauge, made or found; `destroy()` takes its series out of the export.
    func gauge(_ name: String, dimensions: [(String, String)] = []) -> CoreMetrics.Gauge {
        CoreMetrics.Gauge(label: name, dimensions: dimensions, factory: factory)
    }

    /// Registers `sample`, run before each export to set the gauges it owns; the returned token removes it.
    func addSampler(_ sample: @escaping @Sendable () -> Void) -> SamplerToken {
        let id = nextSampler.add(1, ordering: .relaxed).newValue
        samplers.withLock { $0[id] = sample }
        return SamplerToken(id: id, metrics: self)
    }

    func removeSampler(_ token: SamplerToken) {
        _ = samplers.withLock { $0.removeValue(forKey: token.id) }
    }

    /// Runs every sampler (each reads state it holds: none waits on I/O),
    /// then writes the Prometheus text exposition format.
    public func export() -> [UInt8] {
        for sample in samplers.withLock({ Array($0.values) }) {
            sample()
        }
        return registry.emitToBuffer()
    }

    /// Undoes `addSampler` when a component stops (a listener that closed keeps no gauge).
    struct SamplerToken: Sendable {
        let id: UInt64
        let metrics: ServiceMetrics
        func remove() { metrics.removeSampler(self) }
    }
}

/// The series one sampler sets on each scrape, by name and labels: a series
/// it did not set this time (an environment deleted, a kind with no queued
/// job) leaves the export rather than keeping its last value.
final class SampledSeries: Sendable {
    private let metrics: ServiceMetrics
    private let current = Mutex<[SeriesKey: CoreMetrics.Gauge]>([:])

    struct SeriesKey: Hashable, Sendable {
        let name: String
        let labels: [String]
    }

    init(metrics: ServiceMetrics) {
        self.metrics = metrics
    }

    /// Sets exactly `values` (name, labels, value); every other series this
    /// object set before goes. Under the lock throughout: two scrapes at once
    /// must not destroy a gauge the other has just kept.
    func replace(with values: [(name: String, labels: [(String, String)], value: Double)]) {
        current.withLock { current in
            var next: [SeriesKey: CoreMetrics.Gauge] = [:]
            for value in values {
                let key = SeriesKey(name: value.name, labels: value.labels.flatMap { [$0.0, $0.1] })
                let gauge = current[key] ?? metrics.gauge(value.name, dimensions: value.labels)
                gauge.record(value.value)
                next[key] = gauge
            }
            for (key, gauge) in current where next[key] == nil {
                gauge.destroy()
            }
            current = next
        }
    }
}
