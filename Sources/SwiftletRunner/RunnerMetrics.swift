import Prometheus
import Synchronization

/// The runner's Prometheus metrics (swift-prometheus). Job counts by
/// function and state are read from the store at each scrape, so they are
/// right after a restart too; the rest is recorded as it happens.
public final class RunnerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let queueDepth: Gauge
    let runningVMs: Gauge
    let warmVMs: Gauge
    let spawnFailures: Counter
    let snapshotsCreated: Counter
    let leasesLost: Counter
    let claims: Counter
    let rescued: Counter
    let pendingFinishes: Gauge
    /// Every (function, state) pair ever reported: one that has no jobs now reads 0.
    private let reported = Mutex<Set<[String]>>([])
    /// Seconds, from 1 ms to 10 min.
    static let buckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]

    public init() {
        queueDepth = registry.makeGauge(descriptor: .init(metricName: "swiftlet_queue", unitName: "depth", helpText: "Jobs waiting for a VM slot."))
        runningVMs = registry.makeGauge(descriptor: .init(metricName: "swiftlet_running", unitName: "vms", helpText: "VMMs running a job."))
        warmVMs = registry.makeGauge(descriptor: .init(metricName: "swiftlet_warm", unitName: "vms", helpText: "Restored VMMs waiting in warm pools."))
        snapshotsCreated = registry.makeCounter(descriptor: .init(metricName: "swiftlet_snapshots_created", unitName: "total", helpText: "Snapshots made (one cold boot each)."))
        leasesLost = registry.makeCounter(descriptor: .init(metricName: "swiftlet_leases_lost", unitName: "total", helpText: "Attempts this host stopped because its lease was lost (fleet)."))
        claims = registry.makeCounter(descriptor: .init(metricName: "swiftlet_claims", unitName: "total", helpText: "Jobs this host claimed from the shared queue (fleet)."))
        rescued = registry.makeCounter(descriptor: .init(metricName: "swiftlet_rescued", unitName: "total", helpText: "Jobs with expired leases this host re-queued or failed (fleet)."))
        pendingFinishes = registry.makeGauge(descriptor: .init(metricName: "swiftlet_pending_finishes", unitName: "jobs", helpText: "Job ends kept until the database takes them."))
        spawnFailures = registry.makeCounter(descriptor: .init(metricName: "swiftlet_vmm_failures", unitName: "total", helpText: "Attempts whose VMM failed (status 125, killed, or not started)."))
    }

    /// One claim statement's round trip (fleet), found work or not.
    func claimed(seconds: Double) {
        registry.makeValueHistogram(descriptor: .init(metricName: "swiftlet_claim", unitName: "seconds", helpText: "One claim on the shared queue, from sent to answered (fleet)."),
                                    buckets: Self.buckets).record(seconds)
    }

    /// A job reached a final state (`swiftlet_jobs_total{function,state}`).
    func finished(function: String, state: JobState) {
        registry.makeCounter(descriptor: .init(metricName: "swiftlet_jobs", unitName: "total", helpText: "Jobs that reached a final state, by function and state."),
                             labels: [("function", function), ("state", state.rawValue)]).increment()
    }

    func histogram(_ name: String, _ help: String, function: String) -> ValueHistogram {
        registry.makeValueHistogram(descriptor: .init(metricName: name, unitName: "seconds", helpText: help),
                                    labels: [("function", function)], buckets: Self.buckets)
    }

    /// One finished attempt's durations (seconds; nil ones are not recorded).
    func record(function: String, queueWait: Double?, restore: Double?, run: Double?, endToEnd: Double?) {
        if let v = queueWait { histogram("swiftlet_queue_wait", "From accepted to a VM slot.", function: function).record(v) }
        if let v = restore { histogram("swiftlet_restore", "From the slot to the guest ready: process start and snapshot restore, or a warm VM's hand-over.", function: function).record(v) }
        if let v = run { histogram("swiftlet_run", "The handler's run.", function: function).record(v) }
        if let v = endToEnd { histogram("swiftlet_end_to_end", "From accepted to final.", function: function).record(v) }
    }

    /// The exposition text, with the job counts from the store set first
    /// (read at each scrape, not on the jobs' path).
    public func render(counts: [(function: String, state: JobState, count: Int)]) -> [UInt8] {
        queueDepth.set(to: Double(counts.filter { $0.state == .queued }.reduce(0) { $0 + $1.count }))
        func gauge(_ pair: [String]) -> Gauge {
            registry.makeGauge(descriptor: .init(metricName: "swiftlet", unitName: "jobs", helpText: "Stored jobs by function and state."),
                               labels: [("function", pair[0]), ("state", pair[1])])
        }
        let now = Dictionary(counts.map { ([$0.function, $0.state.rawValue], $0.count) }, uniquingKeysWith: +)
        let gone = reported.withLock { r in
            let gone = r.subtracting(now.keys)
            r.formUnion(now.keys)
            return gone
        }
        for (pair, n) in now { gauge(pair).set(to: Double(n)) }
        for pair in gone { gauge(pair).set(to: 0) }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
