import Logging
import NIOCore
import PostgresNIO

/// A store many runners share (PostgreSQL): the queue's claims, the leases
/// on running jobs, the hosts and their heartbeats, and the notifications
/// that wake hosts. The runner takes its fleet mode from a store that is one.
public protocol FleetStore: JobStore {
    /// This runner's id: what it writes as lease owner and fences on.
    var hostID: String { get }
    /// A lease's length: a host that has not extended it by then has lost it.
    var leaseSeconds: Double { get }
    /// Records this host (again after a restart): its capacity and the
    /// images it holds, verified by SHA-256.
    nonisolated(nonsending) func register(_ host: HostCapacity) async throws(RunnerError)
    /// One heartbeat: the host's row, and every lease it holds extended.
    /// Returns the leases it no longer holds (rescued by another host) and
    /// those whose cancellation was asked for on another host.
    nonisolated(nonsending) func heartbeat(_ host: HostCapacity, running: [JobLease]) async throws(RunnerError) -> (lost: [JobLease], cancel: [JobLease])
    /// Takes the oldest due queued job (queued, or a synchronous invoke its
    /// host had no slot for) that fits: its image is one of
    /// `images`, its memory within `memoryMiB`, its function not in
    /// `excluding` and under its concurrency across the fleet. One
    /// statement (`FOR UPDATE SKIP LOCKED`): hosts claiming at once take
    /// different jobs. The job comes back running, leased to this host.
    nonisolated(nonsending) func claim(now: Double, memoryMiB: Int, images: [String], excluding: [String]) async throws(RunnerError) -> (JobRecord, payload: [UInt8])?
    /// Any host's work: running jobs whose lease ran out go back to the
    /// queue (the attempt counted) or, out of attempts, fail with the reason.
    nonisolated(nonsending) func rescueExpired(now: Double) async throws(RunnerError) -> (requeued: [String], failed: [String])
    /// Marks a running job for cancellation and tells its host.
    nonisolated(nonsending) func requestCancel(_ id: String) async throws(RunnerError) -> Bool
    nonisolated(nonsending) func hosts() async throws(RunnerError) -> [HostRecord]
    /// Calls `handler` with each notification until cancelled, reconnecting
    /// (with `.reconnected`) after the database went away.
    func notifications(_ handler: @escaping @Sendable (FleetEvent) async -> Void) -> Task<Void, Never>
}

/// What a host offers the fleet.
public struct HostCapacity: Sendable, Equatable {
    public var slots: Int
    public var memoryMiB: Int
    /// SHA-256 digests of the images present here and verified.
    public var images: [String]
    public var running: Int
    public var address: String
    public init(slots: Int, memoryMiB: Int, images: [String], running: Int, address: String) {
        (self.slots, self.memoryMiB, self.images, self.running, self.address) = (slots, memoryMiB, images, running, address)
    }
}

/// A host as `GET /v1/hosts` shows it.
public struct HostRecord: Sendable, Equatable {
    public var id: String
    public var capacity: HostCapacity
    public var startedAt: Double
    public var heartbeatAt: Double
    /// Seconds since its last heartbeat, by the database's clock.
    public var silentSeconds: Double
    /// It heartbeated within its lease: a host silent longer is gone (its jobs are rescued).
    public var alive: Bool
}

/// One running attempt a host holds.
public struct JobLease: Sendable, Hashable {
    public var id: String
    public var attempt: Int
    public init(id: String, attempt: Int) { (self.id, self.attempt) = (id, attempt) }
}

/// What the fleet's one notification channel carries.
public enum FleetEvent: Sendable, Equatable {
    /// A job was queued or re-queued: claim.
    case work
    /// A job became final (a waiting sync invoke on another host answers).
    case final(String)
    /// Cancel this running job, wherever it runs.
    case cancel(String)
    /// A function was deployed or removed: hosts check which images they hold.
    case functions
    /// The listening connection was re-established: notifications may have been missed.
    case reconnected

    init?(payload: String) {
        if payload == "work" { self = .work; return }
        if payload == "functions" { self = .functions; return }
        if payload.hasPrefix("final:") { self = .final(String(payload.dropFirst(6))); return }
        if payload.hasPrefix("cancel:") { self = .cancel(String(payload.dropFirst(7))); return }
        return nil
    }
}

/// The PostgreSQL notification channel and its payloads.
enum Channel {
    static let name = "swiftlet"
    static let work = "work"
    static let functions = "functions"
    static func final(_ id: String) -> String { "final:" + id }
    static func cancel(_ id: String) -> String { "cancel:" + id }
}

extension PostgresStore: FleetStore {
    public func register(_ host: HostCapacity) async throws(RunnerError) {
        let (logger, me) = (self.logger, hostID)
        try await run("registering host \(me)") { c in
            try await c.query("""
                INSERT INTO hosts (id, slots, memory_mib, images, running, started_at, heartbeat_at, address)
                VALUES (\(me), \(host.slots), \(host.memoryMiB), \(host.images), \(host.running), \(unescaped: Self.dbNow), \(unescaped: Self.dbNow),
                    \(host.address))
                ON CONFLICT (id) DO UPDATE SET slots = EXCLUDED.slots, memory_mib = EXCLUDED.memory_mib, images = EXCLUDED.images,
                    running = EXCLUDED.running, started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, address = EXCLUDED.address
                """, logger: logger)
            return ()
        }
    }

    public func heartbeat(_ host: HostCapacity, running: [JobLease]) async throws(RunnerError) -> (lost: [JobLease], cancel: [JobLease]) {
        let (logger, me, lease) = (self.logger, hostID, leaseSeconds)
        let ids = running.map(\.id)
        let attempts = running.map(\.attempt)
        return try await transaction("heartbeat of \(me)") { c in
            try await c.query("""
                UPDATE hosts SET heartbeat_at = \(unescaped: Self.dbNow), slots = \(host.slots), memory_mib = \(host.memoryMiB),
                    images = \(host.images), running = \(host.running), address = \(host.address) WHERE id = \(me)
                """, logger: logger)
            var kept = Set<JobLease>()
            var cancel: [JobLease] = []
            for try await (id, attempt, cancelled) in try await c.query("""
                UPDATE jobs j SET lease_until = \(unescaped: Self.dbNow) + \(lease)
                FROM unnest(\(ids)::text[], \(attempts)::bigint[]) AS held(id, attempt)
                WHERE j.id = held.id AND j.attempts = held.attempt AND j.state = 'running' AND j.lease_owner = \(me)
                RETURNING j.id, j.attempts, j.cancel_requested
                """, logger: logger).decode((String, Int, Bool).self) {
                kept.insert(JobLease(id: id, attempt: attempt))
                if cancelled { cancel.append(JobLease(id: id, attempt: attempt)) }
            }
            return (running.filter { !kept.contains($0) }, cancel)
        }
    }

    public func claim(now: Double, memoryMiB: Int, images: [String], excluding: [String]) async throws(RunnerError) -> (JobRecord, payload: [UInt8])? {
        let (logger, me, lease) = (self.logger, hostID, leaseSeconds)
        return try await run("claiming a job") { c in
            // One statement: pick (skipping rows other hosts hold locked),
            // lease, and record the attempt. The concurrency count is read
            // without locks: hosts claiming the last slot of a function at
            // the same moment may both take it (documented).
            var claimed: (JobRecord, payload: [UInt8])?
            for try await row in try await c.query("""
                WITH pick AS (
                    SELECT j.seq FROM jobs j JOIN versions v ON v.function = j.function AND v.version = j.version
                    WHERE j.state = 'queued' AND j.not_before <= \(now)
                        AND v.image_sha256 = ANY(\(images)::text[]) AND j.function <> ALL(\(excluding)::text[])
                        AND COALESCE((v.spec::jsonb->>'memoryMiB')::bigint, 128) <= \(memoryMiB)
                        AND (SELECT COUNT(*) FROM jobs r WHERE r.function = j.function AND r.state = 'running')
                            < COALESCE((v.spec::jsonb->>'concurrency')::bigint, 1000000)
                    ORDER BY j.seq LIMIT 1 FOR UPDATE OF j SKIP LOCKED),
                taken AS (
                    UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = \(now),
                        queue_ms = GREATEST(0, (\(now) - not_before) * 1000), lease_owner = \(me),
                        lease_until = \(unescaped: Self.dbNow) + \(lease), cancel_requested = false
                    FROM pick WHERE jobs.seq = pick.seq RETURNING jobs.*),
                attempt AS (
                    INSERT INTO attempts SELECT id, attempts, \(me), \(now), NULL, NULL FROM taken
                    ON CONFLICT (job, number) DO UPDATE SET host = EXCLUDED.host, started_at = EXCLUDED.started_at, finished_at = NULL, outcome = NULL)
                SELECT \(unescaped: Self.jobColumns), payload FROM taken
                """, logger: logger) {
                let payload = try row.makeRandomAccess()[21].decode(ByteBuffer?.self)
                claimed = (try Self.job(row), payload.map { Array($0.readableBytesView) } ?? [])
            }
            return claimed
        }
    }

    public func rescueExpired(now: Double) async throws(RunnerError) -> (requeued: [String], failed: [String]) {
        let logger = self.logger
        return try await transaction("rescuing expired leases") { c in
            var requeued: [String] = []
            var failed: [String] = []
            for try await (id, state) in try await c.query("""
                WITH expired AS (
                    SELECT seq, lease_owner AS owner FROM jobs WHERE state = 'running' AND lease_until < \(unescaped: Self.dbNow)
                    FOR UPDATE SKIP LOCKED),
                rescued AS (
                    UPDATE jobs j SET
                        state = CASE WHEN j.invocation = 'async' AND j.attempts < j.max_attempts THEN 'queued' ELSE 'failed' END,
                        not_before = \(now),
                        error = CASE WHEN j.invocation = 'async' AND j.attempts < j.max_attempts
                            THEN 'its host (' || e.owner || ') stopped heartbeating; retried'
                            ELSE 'its host (' || e.owner || ') stopped heartbeating, and it has no attempts left' END,
                        finished_at = CASE WHEN j.invocation = 'async' AND j.attempts < j.max_attempts THEN NULL ELSE \(now) END,
                        total_ms = CASE WHEN j.invocation = 'async' AND j.attempts < j.max_attempts THEN NULL ELSE (\(now) - j.created_at) * 1000 END,
                        lease_owner = NULL, lease_until = NULL
                    FROM expired e WHERE j.seq = e.seq RETURNING j.id, j.state, e.owner, j.attempts),
                closed AS (
                    UPDATE attempts a SET finished_at = \(now), outcome = 'lease expired (' || r.owner || ')'
                    FROM rescued r WHERE a.job = r.id AND a.number = r.attempts AND a.finished_at IS NULL)
                SELECT id, state FROM rescued
                """, logger: logger).decode((String, String).self) {
                if state == "queued" { requeued.append(id) } else { failed.append(id) }
            }
            if !requeued.isEmpty { try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.work))", logger: logger) }
            for id in failed { try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.final(id)))", logger: logger) }
            return (requeued, failed)
        }
    }

    public func requestCancel(_ id: String) async throws(RunnerError) -> Bool {
        let logger = self.logger
        return try await transaction("cancelling job \(id)") { c in
            let marked = try await Self.column(c.query("""
                UPDATE jobs SET cancel_requested = true WHERE id = \(id) AND state = 'running' RETURNING id
                """, logger: logger), String.self)
            guard !marked.isEmpty else { return false }
            try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.cancel(id)))", logger: logger)
            return true
        }
    }

    public func hosts() async throws(RunnerError) -> [HostRecord] {
        let (logger, lease) = (self.logger, leaseSeconds)
        return try await run("listing hosts") { c in
            var all: [HostRecord] = []
            for try await row in try await c.query("""
                SELECT id, slots, memory_mib, images, running, address, started_at, heartbeat_at,
                    \(unescaped: Self.dbNow) - heartbeat_at FROM hosts ORDER BY id
                """, logger: logger) {
                let r = row.makeRandomAccess()
                let silent = try r[8].decode(Double.self)
                all.append(HostRecord(
                    id: try r[0].decode(String.self),
                    capacity: HostCapacity(slots: try r[1].decode(Int.self), memoryMiB: try r[2].decode(Int.self), images: try r[3].decode([String].self),
                                           running: try r[4].decode(Int.self), address: try r[5].decode(String.self)),
                    startedAt: try r[6].decode(Double.self), heartbeatAt: try r[7].decode(Double.self), silentSeconds: silent,
                    alive: silent <= lease))
            }
            return all
        }
    }

    public func notifications(_ handler: @escaping @Sendable (FleetEvent) async -> Void) -> Task<Void, Never> {
        let client = self.client
        let logger = self.logger
        return Task {
            var reconnect = false
            while !Task.isCancelled {
                do {
                    let announce = reconnect
                    reconnect = true
                    try await client.withConnection { c in
                        try await c.listen(on: Channel.name) { events in
                            if announce { await handler(.reconnected) }
                            for try await n in events {
                                if let e = FleetEvent(payload: n.payload) { await handler(e) }
                            }
                        }
                    }
                } catch {
                    if Task.isCancelled { return }
                    logger.debug("the notification connection failed; reconnecting", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}
