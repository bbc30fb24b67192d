import Foundation
import Logging
import NIOCore
import PostgresNIO
import SwiftletSys
import Synchronization

/// The runner's state in PostgreSQL, shared by a fleet of runners
/// (`serve --store postgres://...`): functions, versions, jobs, attempts,
/// job output (in the `outputs` table, capped as the VMM caps it) and the
/// hosts. The schema is versioned (`schema_migrations`) and migrated at
/// open under an advisory lock, so simultaneous first starts migrate once.
///
/// A running job belongs to one host: `lease_owner` and `lease_until` (the
/// database's clock, so hosts' clocks may differ). Finishing an attempt is
/// fenced on (id, attempt, lease_owner): a host that lost the lease changes
/// nothing. Any host re-queues a job whose lease ran out (`rescueExpired`).
public final class PostgresStore: JobStore {
    let client: PostgresClient
    let runTask: Task<Void, Never>
    /// This runner's id: the lease owner it writes and fences on.
    public let hostID: String
    /// Local files the VMM writes while a job runs (taken into `outputs`
    /// when it ends).
    let directory: String
    let logger: Logger
    /// How long a lease lasts without a heartbeat.
    public let leaseSeconds: Double
    /// An operation that cannot get a connection within this gives up with
    /// `.storeUnavailable` (the API answers 503) instead of hanging.
    let deadline: Duration

    init(client: PostgresClient, runTask: Task<Void, Never>, hostID: String, directory: String, leaseSeconds: Double,
         deadline: Duration, logger: Logger) {
        (self.client, self.runTask, self.hostID, self.directory) = (client, runTask, hostID, directory)
        (self.leaseSeconds, self.deadline, self.logger) = (leaseSeconds, deadline, logger)
    }

    deinit { runTask.cancel() }

    /// Connects (the pool reconnects by itself after an outage), then
    /// brings the schema to the current version.
    public static func open(_ url: PostgresURL, stateDirectory: String, hostID: String, leaseSeconds: Double = 10,
                            deadline: Duration = .seconds(5), logger: Logger) async throws(RunnerError) -> PostgresStore {
        var config: PostgresClient.Configuration
        switch url.endpoint {
        case let .tcp(host, port):
            config = .init(host: host, port: port, username: url.user, password: url.password, database: url.database, tls: .disable)
        case let .unixSocket(path):
            config = .init(unixSocketPath: path, username: url.user, password: url.password, database: url.database)
        }
        config.options.connectTimeout = .seconds(3)
        config.options.maximumConnections = 8
        config.options.keepAliveBehavior = .init(frequency: .seconds(10))
        var quiet = logger
        quiet.logLevel = .critical
        let client = PostgresClient(configuration: config, backgroundLogger: quiet)
        let runTask = Task { await client.run() }
        do {
            try FileManager.default.createDirectory(atPath: stateDirectory + "/jobs", withIntermediateDirectories: true)
        } catch {
            runTask.cancel()
            throw .internalFailure("creating \(stateDirectory)/jobs: \(error)")
        }
        let store = PostgresStore(client: client, runTask: runTask, hostID: hostID, directory: stateDirectory, leaseSeconds: leaseSeconds,
                                  deadline: deadline, logger: logger)
        do {
            try await store.migrate()
        } catch {
            runTask.cancel()
            throw error
        }
        return store
    }

    public func close() { runTask.cancel() }

    // MARK: Schema

    /// Each migration once, in order, each in its own transaction with its
    /// row in `schema_migrations`. Never edit one that has shipped: add the next.
    static let migrations: [(version: Int, sql: [String])] = [
        (1, [
            """
            CREATE TABLE versions (
                function text NOT NULL, version bigint NOT NULL, spec text NOT NULL, image_sha256 text NOT NULL,
                image_path text NOT NULL, created_at double precision NOT NULL, PRIMARY KEY (function, version))
            """,
            """
            CREATE TABLE functions (
                name text PRIMARY KEY, version bigint NOT NULL, created_at double precision NOT NULL, updated_at double precision NOT NULL)
            """,
            """
            CREATE TABLE jobs (
                seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, function text NOT NULL, version bigint NOT NULL,
                state text NOT NULL, invocation text NOT NULL, attempts bigint NOT NULL, max_attempts bigint NOT NULL,
                exit_status bigint, error text, idempotency_key text, payload bytea, created_at double precision NOT NULL,
                started_at double precision, finished_at double precision, not_before double precision NOT NULL,
                output_bytes bigint NOT NULL DEFAULT 0, log_bytes bigint NOT NULL DEFAULT 0,
                queue_ms double precision, restore_ms double precision, run_ms double precision, total_ms double precision,
                origin text NOT NULL, lease_owner text, lease_until double precision,
                cancel_requested boolean NOT NULL DEFAULT false)
            """,
            "CREATE UNIQUE INDEX jobs_idempotency ON jobs (function, idempotency_key) WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX jobs_queue ON jobs (seq) WHERE state = 'queued'",
            "CREATE INDEX jobs_function ON jobs (function, seq)",
            "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
            "CREATE INDEX jobs_leases ON jobs (lease_until) WHERE state = 'running'",
            """
            CREATE TABLE attempts (
                job text NOT NULL, number bigint NOT NULL, host text NOT NULL, started_at double precision NOT NULL,
                finished_at double precision, outcome text, PRIMARY KEY (job, number))
            """,
            "CREATE TABLE outputs (job text NOT NULL, kind text NOT NULL, data bytea NOT NULL, PRIMARY KEY (job, kind))",
            """
            CREATE TABLE hosts (
                id text PRIMARY KEY, slots bigint NOT NULL, memory_mib bigint NOT NULL, images text[] NOT NULL,
                running bigint NOT NULL DEFAULT 0, started_at double precision NOT NULL, heartbeat_at double precision NOT NULL,
                address text NOT NULL DEFAULT '')
            """,
        ]),
    ]

    /// The schema's version after `migrate` (for the tests).
    public func schemaVersion() async throws(RunnerError) -> Int {
        try await run("reading the schema version") { c in
            try await Self.one(c.query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", logger: self.logger), Int.self) ?? 0
        }
    }

    func migrate() async throws(RunnerError) {
        try await transaction("migrating the schema") { c in
            // One migrator at a time across the fleet; the others wait here,
            // then find the versions already applied.
            try await c.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: self.logger)
            try await c.query("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL)",
                              logger: self.logger)
            var applied = Set<Int>()
            for try await v in try await c.query("SELECT version FROM schema_migrations", logger: self.logger).decode(Int.self) { applied.insert(v) }
            for m in Self.migrations where !applied.contains(m.version) {
                for statement in m.sql { try await c.query(PostgresQuery(unsafeSQL: statement), logger: self.logger) }
                try await c.query("INSERT INTO schema_migrations (version, applied_by) VALUES (\(m.version), \(self.hostID))", logger: self.logger)
                self.logger.info("schema migrated", metadata: ["version": "\(m.version)", "host": "\(self.hostID)"])
            }
        }
    }

    /// pg_advisory_xact_lock's key for migrations ("swiftlet" in ASCII).
    static let migrationLock: Int64 = 0x7377_6966_746c_6574

    // MARK: Running statements

    /// Runs `body` on a pooled connection, mapping errors: the database
    /// unreachable (or no connection within `deadline`) is
    /// `.storeUnavailable`; anything else `.internalFailure` naming `what`.
    func run<T: Sendable>(_ what: @autoclosure () -> String,
                          _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws(RunnerError) -> T {
        let client = self.client
        do {
            return try await Self.within(deadline) { try await client.withConnection { c in try await body(c) } }
        } catch let e as RunnerError {
            throw e
        } catch {
            throw Self.map(error, what())
        }
    }

    /// `run` in a transaction: committed when `body` returns, rolled back when it throws.
    func transaction<T: Sendable>(_ what: @autoclosure () -> String,
                                  _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws(RunnerError) -> T {
        let logger = self.logger
        return try await run(what()) { c in
            try await c.query("BEGIN", logger: logger)
            do {
                let value = try await body(c)
                try await c.query("COMMIT", logger: logger)
                return value
            } catch {
                _ = try? await c.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }

    struct Unreachable: Error {}

    /// `body`'s result, or `Unreachable` once `limit` passes. Not a task
    /// group: a group waits for its children, and a query on a connection
    /// whose peer vanished (a partition) ignores cancellation until TCP
    /// gives up, minutes later. The straggler is cancelled and left to end
    /// on its own; its connection is the pool's to close.
    static func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let race = Race<T>()
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            race.waiter.withLock { $0 = c }
            let timer = Task {
                // Cancelled: the body finished first.
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                race.finish(.failure(Unreachable()))
                race.work.withLock { $0 }?.cancel()
            }
            let work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                race.finish(result)
                timer.cancel()
            }
            race.work.withLock { $0 = work }
        }
    }

    /// The first of two to finish resumes the waiter.
    final class Race<T: Sendable>: Sendable {
        let waiter = Mutex<CheckedContinuation<T, any Error>?>(nil)
        let work = Mutex<Task<Void, Never>?>(nil)
        func finish(_ result: Result<T, any Error>) { waiter.withLock { $0.take() }?.resume(with: result) }
    }

    static func map(_ error: any Error, _ what: String) -> RunnerError {
        if error is Unreachable { return .storeUnavailable("no connection to PostgreSQL while \(what)") }
        if let e = error as? PSQLError {
            switch e.code {
            case .server:
                let state = e.serverInfo?[.sqlState] ?? ""
                let message = e.serverInfo?[.message] ?? "\(e.code)"
                // Class 08 (connection exception), 57P01-57P03 (the server shutting down or starting up).
                if state.hasPrefix("08") || state.hasPrefix("57P") { return .storeUnavailable("\(what): \(message)") }
                return .internalFailure("\(what): \(message) (SQLSTATE \(state))")
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .poolClosed, .uncleanShutdown:
                return .storeUnavailable("\(what): \(e.code)")
            default:
                return .internalFailure("\(what): \(e.code)")
            }
        }
        if error is CancellationError { return .storeUnavailable("\(what): cancelled") }
        return .internalFailure("\(what): \(error)")
    }

    /// The first row's first column (nil: no row, or NULL).
    static func one<T: PostgresDecodable>(_ rows: PostgresRowSequence, _: T.Type) async throws -> T? {
        var value: T?
        for try await row in rows where value == nil {
            let cell = row.makeRandomAccess()[0]
            if cell.bytes != nil { value = try cell.decode(T.self) }
        }
        return value
    }

    /// Rows' first columns' values (counts, ids).
    static func column<T: PostgresDecodable>(_ rows: PostgresRowSequence, _: T.Type) async throws -> [T] {
        var all: [T] = []
        for try await row in rows { all.append(try row.makeRandomAccess()[0].decode(T.self)) }
        return all
    }

    // MARK: Rows

    /// What every job query selects, in `job(_:)`'s order.
    static let jobColumns = """
        seq, id, function, version, state, invocation, attempts, max_attempts, exit_status, error, idempotency_key, created_at,
        started_at, finished_at, not_before, output_bytes, log_bytes, queue_ms, restore_ms, run_ms, total_ms
        """

    static func job(_ r: PostgresRow) throws -> JobRecord {
        let row = r.makeRandomAccess()
        return JobRecord(
            id: try row[1].decode(String.self), function: try row[2].decode(String.self), version: try row[3].decode(Int.self),
            state: JobState(rawValue: try row[4].decode(String.self)) ?? .failed,
            invocation: Invocation(rawValue: try row[5].decode(String.self)) ?? .async,
            attempts: try row[6].decode(Int.self), maxAttempts: try row[7].decode(Int.self), exitStatus: try row[8].decode(Int?.self),
            error: try row[9].decode(String?.self), idempotencyKey: try row[10].decode(String?.self), createdAt: try row[11].decode(Double.self),
            startedAt: try row[12].decode(Double?.self), finishedAt: try row[13].decode(Double?.self), notBefore: try row[14].decode(Double.self),
            outputBytes: try row[15].decode(Int.self), logBytes: try row[16].decode(Int.self),
            timings: JobTimings(queueMs: try row[17].decode(Double?.self), restoreMs: try row[18].decode(Double?.self),
                                runMs: try row[19].decode(Double?.self), totalMs: try row[20].decode(Double?.self)),
            seq: Int64(try row[0].decode(Int.self)))
    }

    static func jobs(_ rows: PostgresRowSequence) async throws -> [JobRecord] {
        var all: [JobRecord] = []
        for try await row in rows { all.append(try job(row)) }
        return all
    }

    static let functionColumns = "f.name, v.version, v.spec, v.image_sha256, v.image_path, f.created_at, f.updated_at"

    static func function(_ r: PostgresRow) throws -> FunctionRecord {
        let row = r.makeRandomAccess()
        return FunctionRecord(name: try row[0].decode(String.self), version: try row[1].decode(Int.self),
                              spec: try StoredSpec.decode(try row[2].decode(String.self)),
                              imageSha256: try row[3].decode(String.self), imagePath: try row[4].decode(String.self),
                              createdAt: Date(timeIntervalSince1970: try row[5].decode(Double.self)),
                              updatedAt: Date(timeIntervalSince1970: try row[6].decode(Double.self)))
    }

    static func functions(_ rows: PostgresRowSequence) async throws -> [FunctionRecord] {
        var all: [FunctionRecord] = []
        for try await row in rows { all.append(try function(row)) }
        return all
    }

    static func currentFunction(_ c: PostgresConnection, _ name: String, _ logger: Logger) async throws -> FunctionRecord? {
        try await functions(c.query("""
            SELECT \(unescaped: functionColumns) FROM functions f JOIN versions v ON v.function = f.name AND v.version = f.version
            WHERE f.name = \(name)
            """, logger: logger)).first
    }

    /// The database's clock, seconds since the epoch: what leases are measured in.
    static let dbNow = "extract(epoch from clock_timestamp())::double precision"

    // MARK: Functions

    public func deploy(name: String, spec: FunctionSpec, imagePath: String, imageSha256: String,
                       now: Double) async throws(RunnerError) -> (FunctionRecord, created: Bool) {
        let specText = try StoredSpec.encode(spec)
        let logger = self.logger
        return try await transaction("deploying \(name)") { c in
            // Serializes deploys of one function across the fleet.
            try await c.query("SELECT pg_advisory_xact_lock(hashtext(\("function:" + name)))", logger: logger)
            var currentVersion: Int?
            for try await (version, text, sha) in try await c.query("""
                SELECT f.version, v.spec, v.image_sha256 FROM functions f JOIN versions v ON v.function = f.name AND v.version = f.version
                WHERE f.name = \(name)
                """, logger: logger).decode((Int, String, String).self) {
                currentVersion = version
                if text == specText && sha == imageSha256, let f = try await Self.currentFunction(c, name, logger) { return (f, false) }
            }
            let last = try await Self.one(c.query("SELECT MAX(version) FROM versions WHERE function = \(name)", logger: logger), Int.self) ?? 0
            let version = last + 1
            try await c.query("""
                INSERT INTO versions VALUES (\(name), \(version), \(specText), \(imageSha256), \(imagePath), \(now))
                """, logger: logger)
            if currentVersion == nil {
                try await c.query("INSERT INTO functions VALUES (\(name), \(version), \(now), \(now))", logger: logger)
            } else {
                try await c.query("UPDATE functions SET version = \(version), updated_at = \(now) WHERE name = \(name)", logger: logger)
            }
            guard let f = try await Self.currentFunction(c, name, logger) else { throw RunnerError.internalFailure("deploying \(name): the version vanished") }
            try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.functions))", logger: logger)
            return (f, currentVersion == nil)
        }
    }

    public func function(_ name: String) async throws(RunnerError) -> FunctionRecord? {
        let logger = self.logger
        return try await run("reading \(name)") { c in try await Self.currentFunction(c, name, logger) }
    }

    public func functions() async throws(RunnerError) -> [FunctionRecord] {
        let logger = self.logger
        return try await run("listing functions") { c in
            try await Self.functions(c.query("""
                SELECT \(unescaped: Self.functionColumns) FROM functions f JOIN versions v ON v.function = f.name AND v.version = f.version
                ORDER BY f.name
                """, logger: logger))
        }
    }

    public func version(_ name: String, _ version: Int) async throws(RunnerError) -> FunctionRecord? {
        let logger = self.logger
        return try await run("reading \(name) version \(version)") { c in
            try await Self.functions(c.query("""
                SELECT v.function, v.version, v.spec, v.image_sha256, v.image_path, v.created_at, v.created_at
                FROM versions v WHERE v.function = \(name) AND v.version = \(version)
                """, logger: logger)).first
        }
    }

    public func removeFunction(_ name: String, now: Double) async throws(RunnerError) -> Bool {
        let logger = self.logger
        return try await transaction("removing \(name)") { c in
            let removed = try await Self.column(c.query("DELETE FROM functions WHERE name = \(name) RETURNING name", logger: logger), String.self)
            guard !removed.isEmpty else { return false }
            try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.functions))", logger: logger)
            try await c.query("""
                UPDATE jobs SET state = 'cancelled', error = 'the function was removed', finished_at = \(now), payload = NULL,
                    total_ms = (\(now) - created_at) * 1000 WHERE function = \(name) AND state = 'queued'
                """, logger: logger)
            return true
        }
    }

    public func versionsInUse() async throws(RunnerError) -> Set<VersionKey> {
        let logger = self.logger
        return try await run("listing versions in use") { c in
            var keys = Set<VersionKey>()
            for try await (f, v) in try await c.query("""
                SELECT name, version FROM functions UNION SELECT function, version FROM jobs WHERE state IN ('queued', 'running')
                """, logger: logger).decode((String, Int).self) {
                keys.insert(VersionKey(function: f, version: v))
            }
            return keys
        }
    }

    // MARK: Jobs

    public func insertJob(_ job: JobRecord, payload: [UInt8]?) async throws(RunnerError) -> (JobRecord, replayed: Bool) {
        let (logger, host) = (self.logger, hostID)
        let bytes = payload.map { ByteBuffer(bytes: $0) }
        return try await transaction("recording job \(job.id)") { c in
            if let key = job.idempotencyKey {
                // Two hosts inserting one key: the second waits on the unique index, then conflicts and reads the first's.
                let inserted = try await Self.jobs(c.query("""
                    INSERT INTO jobs (id, function, version, state, invocation, attempts, max_attempts, idempotency_key, payload,
                        created_at, not_before, origin)
                    VALUES (\(job.id), \(job.function), \(job.version), \(job.state.rawValue), \(job.invocation.rawValue), 0,
                        \(job.maxAttempts), \(key), \(bytes), \(job.createdAt), \(job.notBefore), \(host))
                    ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                    RETURNING \(unescaped: Self.jobColumns)
                    """, logger: logger))
                if let j = inserted.first {
                    try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.work))", logger: logger)
                    return (j, false)
                }
                guard let existing = try await Self.jobs(c.query("""
                    SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE function = \(job.function) AND idempotency_key = \(key)
                    """, logger: logger)).first else { throw RunnerError.internalFailure("recording job \(job.id): the idempotency key's job vanished") }
                return (existing, true)
            }
            let inserted = try await Self.jobs(c.query("""
                INSERT INTO jobs (id, function, version, state, invocation, attempts, max_attempts, payload, created_at, not_before, origin)
                VALUES (\(job.id), \(job.function), \(job.version), \(job.state.rawValue), \(job.invocation.rawValue), 0,
                    \(job.maxAttempts), \(bytes), \(job.createdAt), \(job.notBefore), \(host))
                RETURNING \(unescaped: Self.jobColumns)
                """, logger: logger))
            try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.work))", logger: logger)
            return (inserted[0], false)
        }
    }

    public func insertRunningJob(_ job: JobRecord, now: Double, queueMs: Double) async throws(RunnerError) -> JobRecord {
        let (logger, host, lease) = (self.logger, hostID, leaseSeconds)
        return try await transaction("recording job \(job.id)") { c in
            let inserted = try await Self.jobs(c.query("""
                INSERT INTO jobs (id, function, version, state, invocation, attempts, max_attempts, created_at, not_before, started_at,
                    queue_ms, origin, lease_owner, lease_until)
                VALUES (\(job.id), \(job.function), \(job.version), 'running', \(job.invocation.rawValue), 1, \(job.maxAttempts),
                    \(job.createdAt), \(job.notBefore), \(now), \(queueMs), \(host), \(host), \(unescaped: Self.dbNow) + \(lease))
                RETURNING \(unescaped: Self.jobColumns)
                """, logger: logger))
            try await c.query("INSERT INTO attempts VALUES (\(job.id), 1, \(host), \(now), NULL, NULL)", logger: logger)
            return inserted[0]
        }
    }

    public func job(_ id: String) async throws(RunnerError) -> JobRecord? {
        let logger = self.logger
        return try await run("reading job \(id)") { c in
            try await Self.jobs(c.query("SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE id = \(id)", logger: logger)).first
        }
    }

    public func payload(_ id: String) async throws(RunnerError) -> [UInt8] {
        let logger = self.logger
        return try await run("reading job \(id)'s payload") { c in
            let b = try await Self.one(c.query("SELECT payload FROM jobs WHERE id = \(id)", logger: logger), ByteBuffer.self)
            return b.map { Array($0.readableBytesView) } ?? []
        }
    }

    public func jobs(function: String?, state: JobState?, limit: Int, before cursor: Int64?) async throws(RunnerError) -> [JobRecord] {
        let logger = self.logger
        return try await run("listing jobs") { c in
            // NULL filters match everything.
            try await Self.jobs(c.query("""
                SELECT \(unescaped: Self.jobColumns) FROM jobs
                WHERE (\(function)::text IS NULL OR function = \(function)) AND (\(state?.rawValue)::text IS NULL OR state = \(state?.rawValue))
                    AND (\(cursor.map { Int($0) })::bigint IS NULL OR seq < \(cursor.map { Int($0) }))
                ORDER BY seq DESC LIMIT \(limit)
                """, logger: logger))
        }
    }

    public func countQueued() async throws(RunnerError) -> Int {
        let logger = self.logger
        return try await run("counting the queue") { c in
            try await Self.one(c.query("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", logger: logger), Int.self) ?? 0
        }
    }

    public func nextDue() async throws(RunnerError) -> Double? {
        let logger = self.logger
        return try await run("reading the queue") { c in
            try await Self.one(c.query("SELECT MIN(not_before) FROM jobs WHERE state = 'queued' AND invocation = 'async'", logger: logger), Double.self)
        }
    }

    public func markRunning(_ id: String, now: Double, queueMs: Double) async throws(RunnerError) -> Bool {
        let (logger, host, lease) = (self.logger, hostID, leaseSeconds)
        return try await transaction("starting job \(id)") { c in
            // Whoever updates it first owns it; another host's update finds it no longer queued.
            let n = try await Self.column(c.query("""
                UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = \(now), queue_ms = \(queueMs),
                    lease_owner = \(host), lease_until = \(unescaped: Self.dbNow) + \(lease)
                WHERE id = \(id) AND state = 'queued' RETURNING attempts
                """, logger: logger), Int.self)
            guard let attempt = n.first else { return false }
            try await c.query("""
                INSERT INTO attempts VALUES (\(id), \(attempt), \(host), \(now), NULL, NULL)
                ON CONFLICT (job, number) DO UPDATE SET host = EXCLUDED.host, started_at = EXCLUDED.started_at, finished_at = NULL, outcome = NULL
                """, logger: logger)
            return true
        }
    }

    public func finishAttempt(_ id: String, attempt: Int, state: JobState, exitStatus: Int?, error: String?, outcome: String,
                              now: Double, retryAt: Double?, timings: JobTimings, outputBytes: Int, logBytes: Int) async throws(RunnerError) -> JobRecord? {
        let (logger, host) = (self.logger, hostID)
        let (outPath, logPath) = (outputPath(id), self.logPath(id))
        // The output goes into the database with the final state, in one
        // transaction; the VMM's collector capped both files.
        let final = retryAt == nil
        let output = final ? ((try? readFile(outPath)) ?? []) : []
        let log = final ? ((try? readFile(logPath)) ?? []) : []
        let result: JobRecord? = try await transaction("finishing job \(id)") { c in
            let updated: [JobRecord]
            // Fenced: this attempt, and (running) this host's lease. A queued
            // job failed before it ran (its version gone) has no owner.
            if let retryAt {
                updated = try await Self.jobs(c.query("""
                    UPDATE jobs SET state = 'queued', not_before = \(retryAt), error = \(error), lease_owner = NULL, lease_until = NULL
                    WHERE id = \(id) AND attempts = \(attempt) AND state = 'running' AND lease_owner = \(host)
                    RETURNING \(unescaped: Self.jobColumns)
                    """, logger: logger))
            } else {
                updated = try await Self.jobs(c.query("""
                    UPDATE jobs SET state = \(state.rawValue), exit_status = \(exitStatus), error = \(error), finished_at = \(now),
                        payload = NULL, restore_ms = \(timings.restoreMs), run_ms = \(timings.runMs), total_ms = \(timings.totalMs),
                        output_bytes = \(outputBytes), log_bytes = \(logBytes), lease_owner = NULL, lease_until = NULL
                    WHERE id = \(id) AND attempts = \(attempt)
                        AND ((state = 'running' AND lease_owner = \(host)) OR state = 'queued')
                    RETURNING \(unescaped: Self.jobColumns)
                    """, logger: logger))
            }
            guard let job = updated.first else {
                return try await Self.jobs(c.query("SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE id = \(id)", logger: logger)).first
            }
            try await c.query("""
                UPDATE attempts SET finished_at = \(now), outcome = \(outcome) WHERE job = \(id) AND number = \(attempt) AND finished_at IS NULL
                """, logger: logger)
            if job.state.isFinal {
                try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.final(id)))", logger: logger)
            } else {
                try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.work))", logger: logger)
            }
            if final {
                for (kind, bytes) in [("output", output), ("log", log)] where !bytes.isEmpty {
                    try await c.query("""
                        INSERT INTO outputs VALUES (\(id), \(kind), \(ByteBuffer(bytes: bytes)))
                        ON CONFLICT (job, kind) DO UPDATE SET data = EXCLUDED.data
                        """, logger: logger)
                }
            }
            return job
        }
        // Taken in (or fenced off, or retried: the next attempt writes anew).
        unlink(outPath)
        unlink(logPath)
        return result
    }

    public func cancelQueued(_ id: String, now: Double) async throws(RunnerError) -> JobRecord? {
        let logger = self.logger
        return try await transaction("cancelling job \(id)") { c in
            let j = try await Self.jobs(c.query("""
                UPDATE jobs SET state = 'cancelled', finished_at = \(now), payload = NULL, total_ms = (\(now) - created_at) * 1000
                WHERE id = \(id) AND state = 'queued' RETURNING \(unescaped: Self.jobColumns)
                """, logger: logger)).first
            if j != nil { try await c.query("SELECT pg_notify(\(Channel.name), \(Channel.final(id)))", logger: logger) }
            return j
        }
    }

    public func recover(now: Double) async throws(RunnerError) -> (requeued: Int, failed: Int) {
        let (logger, host) = (self.logger, hostID)
        return try await transaction("recovering jobs") { c in
            try await c.query("""
                UPDATE attempts a SET finished_at = \(now), outcome = 'runner restarted' FROM jobs j
                WHERE a.job = j.id AND a.number = j.attempts AND a.finished_at IS NULL AND j.state = 'running' AND j.lease_owner = \(host)
                """, logger: logger)
            let requeued = try await Self.column(c.query("""
                UPDATE jobs SET state = 'queued', not_before = \(now), error = 'runner restarted', lease_owner = NULL, lease_until = NULL
                WHERE state = 'running' AND lease_owner = \(host) AND invocation = 'async' AND attempts < max_attempts RETURNING id
                """, logger: logger), String.self)
            let failed = try await Self.column(c.query("""
                UPDATE jobs SET state = 'failed', error = 'runner restarted', finished_at = \(now), payload = NULL,
                    total_ms = (\(now) - created_at) * 1000, lease_owner = NULL, lease_until = NULL
                WHERE (state = 'running' AND lease_owner = \(host)) OR (state = 'queued' AND invocation = 'sync' AND origin = \(host))
                RETURNING id
                """, logger: logger), String.self)
            return (requeued.count, failed.count)
        }
    }

    @discardableResult
    public func deleteJob(_ id: String) async throws(RunnerError) -> Bool {
        let logger = self.logger
        return try await run("deleting job \(id)") { c in
            !(try await Self.column(c.query("DELETE FROM jobs WHERE id = \(id) AND state = 'queued' RETURNING id", logger: logger), String.self)).isEmpty
        }
    }

    public func replayedJob(function: String, key: String) async throws(RunnerError) -> JobRecord? {
        let logger = self.logger
        return try await run("reading idempotency key") { c in
            try await Self.jobs(c.query("""
                SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE function = \(function) AND idempotency_key = \(key)
                """, logger: logger)).first
        }
    }

    public func dueHeads(now: Double) async throws(RunnerError) -> [JobRecord] {
        let logger = self.logger
        return try await run("reading the queue") { c in
            try await Self.jobs(c.query("""
                SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE seq IN (
                    SELECT MIN(seq) FROM jobs WHERE state = 'queued' AND invocation = 'async' AND not_before <= \(now) GROUP BY function)
                """, logger: logger))
        }
    }

    public func dueHead(function: String, now: Double) async throws(RunnerError) -> JobRecord? {
        let logger = self.logger
        return try await run("reading the queue") { c in
            try await Self.jobs(c.query("""
                SELECT \(unescaped: Self.jobColumns) FROM jobs WHERE function = \(function) AND state = 'queued' AND invocation = 'async'
                    AND not_before <= \(now) ORDER BY seq LIMIT 1
                """, logger: logger)).first
        }
    }

    public func prune(finishedBefore cutoff: Double) async throws(RunnerError) -> Int {
        let logger = self.logger
        return try await transaction("pruning jobs") { c in
            let ids = try await Self.column(c.query("""
                DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < \(cutoff) RETURNING id
                """, logger: logger), String.self)
            try await c.query("DELETE FROM attempts WHERE job = ANY(\(ids))", logger: logger)
            try await c.query("DELETE FROM outputs WHERE job = ANY(\(ids))", logger: logger)
            return ids.count
        }
    }

    public func jobCounts() async throws(RunnerError) -> [(function: String, state: JobState, count: Int)] {
        let logger = self.logger
        return try await run("counting jobs") { c in
            var counts: [(function: String, state: JobState, count: Int)] = []
            for try await (f, s, n) in try await c.query("SELECT function, state, COUNT(*) FROM jobs GROUP BY function, state", logger: logger)
                .decode((String, String, Int).self) {
                if let state = JobState(rawValue: s) { counts.append((f, state, n)) }
            }
            return counts
        }
    }

    // MARK: Output

    public func outputPath(_ id: String) -> String { directory + "/jobs/\(id).out" }
    public func logPath(_ id: String) -> String { directory + "/jobs/\(id).log" }

    /// From the database once the job is final; while it runs here, the
    /// VMM's file so far.
    public func readOutput(_ id: String, log: Bool) async throws(RunnerError) -> [UInt8] {
        let logger = self.logger
        let stored: (found: Bool, data: [UInt8]?) = try await run("reading job \(id)'s output") { c in
            var found = false
            var data: [UInt8]?
            for try await (_, b) in try await c.query("""
                SELECT j.id, o.data FROM jobs j LEFT JOIN outputs o ON o.job = j.id AND o.kind = \(log ? "log" : "output") WHERE j.id = \(id)
                """, logger: logger).decode((String, ByteBuffer?).self) {
                found = true
                data = b.map { Array($0.readableBytesView) }
            }
            return (found, data)
        }
        guard stored.found else { throw .jobNotFound(id) }
        if let data = stored.data { return data }
        return (try? readFile(log ? logPath(id) : outputPath(id))) ?? []
    }
}

/// A spec as the stores keep it: JSON with sorted keys, so that an
/// unchanged spec is byte-for-byte the same text (no new version).
enum StoredSpec {
    static func encode(_ spec: FunctionSpec) throws(RunnerError) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        do { return String(decoding: try e.encode(spec), as: UTF8.self) } catch { throw .internalFailure("encoding a spec: \(error)") }
    }

    static func decode(_ text: String) throws -> FunctionSpec {
        try JSONDecoder().decode(FunctionSpec.self, from: Data(text.utf8))
    }
}
