import Foundation
import GRDB
import Synchronization
import SwiftletSys

/// The runner's durable state: SQLite in WAL mode under `--state-dir`
/// (functions, their versions, jobs and attempts), with job output in
/// files beside it (`jobs/<id>.out`, `.log`). Every method is one
/// transaction; errors come back as `RunnerError.internalFailure` naming
/// the operation and SQLite's words.
public final class SQLiteStore: JobStore {
    public let directory: String
    let pool: DatabasePool
    /// Every function's current version, by name: an invoke reads its
    /// function once per call, and two SELECTs plus a JSON decode cost a
    /// few hundred microseconds here. Loaded at open; changed only inside
    /// the write transaction that changes the table (writes are serial, so
    /// the cache follows the commit order); dropped and reloaded (inside a
    /// write, so no writer interleaves) if such a commit fails.
    private let current = Mutex<[String: FunctionRecord]?>(nil)
    private let checkpointer: WALCheckpointer

    public init(directory: String) throws(RunnerError) {
        self.directory = directory
        do {
            try FileManager.default.createDirectory(atPath: directory + "/jobs", withIntermediateDirectories: true)
            var config = Configuration()
            config.prepareDatabase { db in
                // WAL (DatabasePool's default) with NORMAL sync: a commit is
                // durable against a daemon crash; a power loss may lose the
                // last commits, never corrupt the file.
                try db.execute(sql: "PRAGMA synchronous = NORMAL")
                // The checkpointer's thread checkpoints instead (see WALCheckpointer).
                try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
            }
            config.busyMode = .timeout(5)
            pool = try DatabasePool(path: directory + "/runner.sqlite3", configuration: config)
            try Self.migrator.migrate(pool)
            let columns = try pool.read { db in try db.columns(in: "jobs").map(\.name) }
            guard columns == Self.jobColumns else { throw RunnerError.internalFailure("the jobs table has columns \(columns), not \(Self.jobColumns)") }
            checkpointer = try WALCheckpointer(path: directory + "/runner.sqlite3")
            try current.withLock { $0 = try pool.read(Self.loadFunctions) }
        } catch {
            throw .internalFailure("opening the store in \(directory): \(error)")
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE versions (
                    function TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
                    imageSha256 TEXT NOT NULL, imagePath TEXT NOT NULL, createdAt REAL NOT NULL,
                    PRIMARY KEY (function, version));
                CREATE TABLE functions (
                    name TEXT PRIMARY KEY, version INTEGER NOT NULL, createdAt REAL NOT NULL, updatedAt REAL NOT NULL);
                CREATE TABLE jobs (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE, function TEXT NOT NULL, version INTEGER NOT NULL,
                    state TEXT NOT NULL, invocation TEXT NOT NULL, attempts INTEGER NOT NULL,
                    maxAttempts INTEGER NOT NULL, exitStatus INTEGER, error TEXT, idempotencyKey TEXT,
                    payload BLOB, createdAt REAL NOT NULL, startedAt REAL, finishedAt REAL,
                    notBefore REAL NOT NULL, outputBytes INTEGER NOT NULL DEFAULT 0, logBytes INTEGER NOT NULL DEFAULT 0,
                    queueMs REAL, restoreMs REAL, runMs REAL, totalMs REAL);
                CREATE UNIQUE INDEX jobs_idempotency ON jobs(function, idempotencyKey) WHERE idempotencyKey IS NOT NULL;
                CREATE INDEX jobs_state ON jobs(state, notBefore);
                CREATE INDEX jobs_function ON jobs(function, seq);
                CREATE INDEX jobs_finished ON jobs(finishedAt) WHERE finishedAt IS NOT NULL;
                CREATE TABLE attempts (
                    job TEXT NOT NULL, number INTEGER NOT NULL, startedAt REAL NOT NULL, finishedAt REAL,
                    outcome TEXT, PRIMARY KEY (job, number));
                """)
        }
        return m
    }

    deinit { checkpointer.stop() }

    func write<T: Sendable>(_ what: @autoclosure () -> String, _ body: @Sendable (Database) throws -> T) throws(RunnerError) -> T {
        defer { checkpointer.written() }
        do { return try pool.write(body) } catch let e as RunnerError { throw e } catch {
            throw .internalFailure("\(what()): \(error)")
        }
    }

    func read<T: Sendable>(_ what: @autoclosure () -> String, _ body: @Sendable (Database) throws -> T) throws(RunnerError) -> T {
        do { return try pool.read(body) } catch let e as RunnerError { throw e } catch {
            throw .internalFailure("\(what()): \(error)")
        }
    }

    /// A write that changes the functions table: `body` runs in the
    /// transaction and returns the cache's new entries (nil: removed); a
    /// failed commit drops the cache, reloaded at once under the writer.
    func writeFunctions<T: Sendable>(_ what: @autoclosure () -> String,
                                     _ body: @Sendable (Database) throws -> (T, [String: FunctionRecord?])) throws(RunnerError) -> T {
        do {
            return try write(what()) { db in
                let (result, changes) = try body(db)
                current.withLock { cache in for (name, record) in changes { cache?[name] = record } }
                return result
            }
        } catch {
            do { try pool.write { db in try current.withLock { $0 = try Self.loadFunctions(db) } } } catch { current.withLock { $0 = nil } }
            throw error
        }
    }

    static func loadFunctions(_ db: Database) throws -> [String: FunctionRecord] {
        var all: [String: FunctionRecord] = [:]
        for name in try String.fetchAll(db, sql: "SELECT name FROM functions") {
            if let f = try function(db, name) { all[name] = f }
        }
        return all
    }

    // MARK: Functions

    /// Makes `spec` the function's current version: a new version when it
    /// differs from the current one. Returns the record and whether the
    /// function is new.
    public func deploy(name: String, spec: FunctionSpec, imagePath: String, imageSha256: String, now: Double) throws(RunnerError) -> (FunctionRecord, created: Bool) {
        let specText = try StoredSpec.encode(spec)
        return try writeFunctions("deploying \(name)") { db in
            let current = try Row.fetchOne(db, sql: "SELECT version, createdAt FROM functions WHERE name = ?", arguments: [name])
            if let current {
                let version: Int = current["version"]
                if let row = try Row.fetchOne(db, sql: "SELECT spec, imageSha256 FROM versions WHERE function = ? AND version = ?", arguments: [name, version]),
                   (row["spec"] as String) == specText, (row["imageSha256"] as String) == imageSha256 {
                    let f = try Self.function(db, name)!
                    return ((f, false), [name: f])
                }
            }
            let last = try Int.fetchOne(db, sql: "SELECT MAX(version) FROM versions WHERE function = ?", arguments: [name]) ?? 0
            let version = last + 1
            try db.execute(sql: "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                           arguments: [name, version, specText, imageSha256, imagePath, now])
            if current == nil {
                try db.execute(sql: "INSERT INTO functions VALUES (?, ?, ?, ?)", arguments: [name, version, now, now])
            } else {
                try db.execute(sql: "UPDATE functions SET version = ?, updatedAt = ? WHERE name = ?", arguments: [version, now, name])
            }
            let f = try Self.function(db, name)!
            return ((f, current == nil), [name: f])
        }
    }

    /// The function's current version (from the cache).
    public func function(_ name: String) throws(RunnerError) -> FunctionRecord? {
        if let cached = current.withLock({ $0.map { $0[name] } }) { return cached }
        return try read("reading \(name)") { db in try Self.function(db, name) }
    }

    /// Every function's current version, by name (from the cache).
    public func functions() throws(RunnerError) -> [FunctionRecord] {
        if let all = current.withLock({ $0.map { Array($0.values) } }) { return all.sorted { $0.name < $1.name } }
        return try read("listing functions") { db in try Self.loadFunctions(db).values.sorted { $0.name < $1.name } }
    }

    /// One version (current or not), for jobs queued before a change.
    public func version(_ name: String, _ version: Int) throws(RunnerError) -> FunctionRecord? {
        try read("reading \(name) version \(version)") { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM versions WHERE function = ? AND version = ?", arguments: [name, version]) else { return nil }
            return try Self.record(row, name: name, createdAt: row["createdAt"], updatedAt: row["createdAt"])
        }
    }

    /// Removes the function; its queued jobs are cancelled. Returns false
    /// when there was none.
    public func removeFunction(_ name: String, now: Double) throws(RunnerError) -> Bool {
        try writeFunctions("removing \(name)") { db in
            try db.execute(sql: "DELETE FROM functions WHERE name = ?", arguments: [name])
            guard db.changesCount > 0 else { return (false, [:]) }
            try db.execute(sql: """
                UPDATE jobs SET state = 'cancelled', error = 'the function was removed', finishedAt = ?, payload = NULL,
                    totalMs = (? - createdAt) * 1000 WHERE function = ? AND state = 'queued'
                """, arguments: [now, now, name])
            return (true, [name: nil])
        }
    }

    /// The versions that queued or running jobs, or a current function, still need.
    public func versionsInUse() throws(RunnerError) -> Set<VersionKey> {
        try read("listing versions in use") { db in
            var keys = Set<VersionKey>()
            for row in try Row.fetchAll(db, sql: """
                SELECT name AS f, version AS v FROM functions
                UNION SELECT function, version FROM jobs WHERE state IN ('queued', 'running')
                """) {
                keys.insert(VersionKey(function: row["f"], version: row["v"]))
            }
            return keys
        }
    }

    static func function(_ db: Database, _ name: String) throws -> FunctionRecord? {
        guard let f = try Row.fetchOne(db, sql: "SELECT * FROM functions WHERE name = ?", arguments: [name]) else { return nil }
        let version: Int = f["version"]
        guard let v = try Row.fetchOne(db, sql: "SELECT * FROM versions WHERE function = ? AND version = ?", arguments: [name, version]) else { return nil }
        return try record(v, name: name, createdAt: f["createdAt"], updatedAt: f["updatedAt"])
    }

    static func record(_ v: Row, name: String, createdAt: Double, updatedAt: Double) throws -> FunctionRecord {
        let spec = try StoredSpec.decode(v["spec"])
        return FunctionRecord(name: name, version: v["version"], spec: spec, imageSha256: v["imageSha256"], imagePath: v["imagePath"],
                              createdAt: Date(timeIntervalSince1970: createdAt), updatedAt: Date(timeIntervalSince1970: updatedAt))
    }

    // MARK: Jobs

    /// Inserts a queued job, or returns the job an earlier submit with the
    /// same idempotency key made (`replayed` true).
    public func insertJob(_ job: JobRecord, payload: [UInt8]?) throws(RunnerError) -> (JobRecord, replayed: Bool) {
        try write("recording job \(job.id)") { db in
            if let key = job.idempotencyKey,
               let row = try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE function = ? AND idempotencyKey = ?", arguments: [job.function, key]) {
                return (Self.job(row), true)
            }
            try db.execute(sql: """
                INSERT INTO jobs (id, function, version, state, invocation, attempts, maxAttempts, idempotencyKey, payload,
                    createdAt, notBefore) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)
                """, arguments: [job.id, job.function, job.version, job.state.rawValue, job.invocation.rawValue, job.maxAttempts,
                                 job.idempotencyKey, payload.map { Data($0) }, job.createdAt, job.notBefore])
            var stored = job
            stored.seq = db.lastInsertedRowID
            return (stored, false)
        }
    }

    /// A synchronous invoke that got its slot at once: inserted running,
    /// with its first attempt, in one transaction.
    public func insertRunningJob(_ job: JobRecord, now: Double, queueMs: Double) throws(RunnerError) -> JobRecord {
        try write("recording job \(job.id)") { db in
            try db.cachedStatement(sql: """
                INSERT INTO jobs (id, function, version, state, invocation, attempts, maxAttempts, createdAt, notBefore, startedAt, queueMs)
                VALUES (?, ?, ?, 'running', ?, 1, ?, ?, ?, ?, ?)
                """).execute(arguments: [job.id, job.function, job.version, job.invocation.rawValue, job.maxAttempts, job.createdAt,
                                         job.notBefore, now, queueMs])
            var stored = job
            stored.seq = db.lastInsertedRowID
            (stored.state, stored.attempts, stored.startedAt, stored.timings.queueMs) = (.running, 1, now, queueMs)
            try db.cachedStatement(sql: "INSERT INTO attempts VALUES (?, 1, ?, NULL, NULL)").execute(arguments: [job.id, now])
            return stored
        }
    }

    public func job(_ id: String) throws(RunnerError) -> JobRecord? {
        try read("reading job \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    public func payload(_ id: String) throws(RunnerError) -> [UInt8] {
        try read("reading job \(id)'s payload") { db in
            (try Data.fetchOne(db, sql: "SELECT payload FROM jobs WHERE id = ?", arguments: [id])).map { Array($0) } ?? []
        }
    }

    /// Jobs newest first, after the cursor (a seq), filtered.
    public func jobs(function: String?, state: JobState?, limit: Int, before cursor: Int64?) throws(RunnerError) -> [JobRecord] {
        try read("listing jobs") { db in
            var sql = "SELECT * FROM jobs WHERE 1"
            var args: [DatabaseValueConvertible?] = []
            if let function { sql += " AND function = ?"; args.append(function) }
            if let state { sql += " AND state = ?"; args.append(state.rawValue) }
            if let cursor { sql += " AND seq < ?"; args.append(cursor) }
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit)
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.job)
        }
    }

    public func countQueued() throws(RunnerError) -> Int {
        try read("counting the queue") { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs WHERE state = 'queued'") ?? 0 }
    }

    /// The earliest time a queued job becomes due (retry backoff), if any.
    public func nextDue() throws(RunnerError) -> Double? {
        try read("reading the queue") { db in
            try Double.fetchOne(db, sql: "SELECT MIN(notBefore) FROM jobs WHERE state = 'queued' AND invocation = 'async'")
        }
    }

    /// queued → running for one attempt. False when the job is no longer
    /// queued (cancelled meanwhile).
    public func markRunning(_ id: String, now: Double, queueMs: Double) throws(RunnerError) -> Bool {
        try write("starting job \(id)") { db in
            try db.execute(sql: """
                UPDATE jobs SET state = 'running', attempts = attempts + 1, startedAt = ?, queueMs = ? WHERE id = ? AND state = 'queued'
                """, arguments: [now, queueMs, id])
            guard db.changesCount > 0 else { return false }
            let n = try Int.fetchOne(db, sql: "SELECT attempts FROM jobs WHERE id = ?", arguments: [id]) ?? 1
            try db.execute(sql: "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, NULL, NULL)", arguments: [id, n, now])
            return true
        }
    }

    public func finishAttempt(_ id: String, attempt: Int, state: JobState, exitStatus: Int?, error: String?, outcome: String, now: Double,
                              retryAt: Double?, timings: JobTimings, outputBytes: Int, logBytes: Int) throws(RunnerError) -> JobRecord? {
        // Cached statements and the record by RETURNING: this runs between
        // the VMM's exit and the response. One host: the attempt number is
        // the whole fence.
        try write("finishing job \(id)") { db in
            let updated: Row?
            if let retryAt {
                updated = try Row.fetchOne(db.cachedStatement(sql: """
                    UPDATE jobs SET state = 'queued', notBefore = ?, error = ? WHERE id = ? AND attempts = ? AND state = 'running' RETURNING *
                    """), arguments: [retryAt, error, id, attempt])
            } else {
                updated = try Row.fetchOne(db.cachedStatement(sql: """
                    UPDATE jobs SET state = ?, exitStatus = ?, error = ?, finishedAt = ?, payload = NULL, restoreMs = ?, runMs = ?,
                        totalMs = ?, outputBytes = ?, logBytes = ? WHERE id = ? AND attempts = ? AND state IN ('running', 'queued') RETURNING *
                    """), arguments: [state.rawValue, exitStatus, error, now, timings.restoreMs, timings.runMs, timings.totalMs,
                                      outputBytes, logBytes, id, attempt])
            }
            guard let updated else {
                // Not this attempt's to finish (already final: cancelled): the job as it is.
                return try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(Self.job)
            }
            try db.cachedStatement(sql: "UPDATE attempts SET finishedAt = ?, outcome = ? WHERE job = ? AND number = ? AND finishedAt IS NULL")
                .execute(arguments: [now, outcome, id, attempt])
            return Self.job(updated)
        }
    }

    /// A queued job cancelled before it ran; nil when it is not queued.
    public func cancelQueued(_ id: String, now: Double) throws(RunnerError) -> JobRecord? {
        try write("cancelling job \(id)") { db in
            try db.execute(sql: """
                UPDATE jobs SET state = 'cancelled', finishedAt = ?, payload = NULL, totalMs = (? - createdAt) * 1000
                WHERE id = ? AND state = 'queued'
                """, arguments: [now, now, id])
            guard db.changesCount > 0 else { return nil }
            return try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE id = ?", arguments: [id]).map(Self.job)
        }
    }

    /// After a restart: every job left running by the old daemon is queued
    /// again when it has attempts left (at-least-once), else failed with
    /// "runner restarted"; queued sync invocations (their caller is gone)
    /// fail the same way. Returns (requeued, failed).
    public func recover(now: Double) throws(RunnerError) -> (requeued: Int, failed: Int) {
        try write("recovering jobs") { db in
            try db.execute(sql: "UPDATE attempts SET finishedAt = ?, outcome = 'runner restarted' WHERE finishedAt IS NULL", arguments: [now])
            try db.execute(sql: """
                UPDATE jobs SET state = 'queued', notBefore = ?, error = 'runner restarted'
                WHERE state = 'running' AND invocation = 'async' AND attempts < maxAttempts
                """, arguments: [now])
            let requeued = db.changesCount
            try db.execute(sql: """
                UPDATE jobs SET state = 'failed', error = 'runner restarted', finishedAt = ?, payload = NULL, totalMs = (? - createdAt) * 1000
                WHERE state = 'running' OR (state = 'queued' AND invocation = 'sync')
                """, arguments: [now, now])
            return (requeued, db.changesCount)
        }
    }

    /// A throttled synchronous invoke that never ran.
    @discardableResult
    public func deleteJob(_ id: String) throws(RunnerError) -> Bool {
        try write("deleting job \(id)") { db in
            try db.execute(sql: "DELETE FROM jobs WHERE id = ? AND state = 'queued'", arguments: [id])
            return db.changesCount > 0
        }
    }

    public func replayedJob(function: String, key: String) throws(RunnerError) -> JobRecord? {
        try read("reading idempotency key") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM jobs WHERE function = ? AND idempotencyKey = ?", arguments: [function, key]).map(Self.job)
        }
    }

    /// The oldest due queued job of each function.
    public func dueHeads(now: Double) throws(RunnerError) -> [JobRecord] {
        try read("reading the queue") { db in
            try Row.fetchAll(db, sql: """
                SELECT * FROM jobs WHERE seq IN (SELECT MIN(seq) FROM jobs WHERE state = 'queued' AND invocation = 'async'
                    AND notBefore <= ? GROUP BY function)
                """, arguments: [now]).map(Self.job)
        }
    }

    /// The oldest due queued job of one function.
    public func dueHead(function: String, now: Double) throws(RunnerError) -> JobRecord? {
        try read("reading the queue") { db in
            try Row.fetchOne(db, sql: """
                SELECT * FROM jobs WHERE function = ? AND state = 'queued' AND invocation = 'async' AND notBefore <= ? ORDER BY seq LIMIT 1
                """, arguments: [function, now]).map(Self.job)
        }
    }

    /// Deletes finished jobs older than the cutoff, with their output files.
    public func prune(finishedBefore cutoff: Double) throws(RunnerError) -> Int {
        let ids: [String] = try write("pruning jobs") { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM jobs WHERE finishedAt IS NOT NULL AND finishedAt < ?", arguments: [cutoff])
            try db.execute(sql: "DELETE FROM attempts WHERE job IN (SELECT id FROM jobs WHERE finishedAt IS NOT NULL AND finishedAt < ?)", arguments: [cutoff])
            try db.execute(sql: "DELETE FROM jobs WHERE finishedAt IS NOT NULL AND finishedAt < ?", arguments: [cutoff])
            return ids
        }
        for id in ids {
            unlink(outputPath(id))
            unlink(logPath(id))
        }
        return ids.count
    }

    /// Job counts by function and state (the metrics).
    public func jobCounts() throws(RunnerError) -> [(function: String, state: JobState, count: Int)] {
        try read("counting jobs") { db in
            try Row.fetchAll(db, sql: "SELECT function, state, COUNT(*) AS n FROM jobs GROUP BY function, state").compactMap { row in
                guard let s = JobState(rawValue: row["state"]) else { return nil }
                return (row["function"], s, row["n"])
            }
        }
    }

    public func outputPath(_ id: String) -> String { directory + "/jobs/\(id).out" }
    public func logPath(_ id: String) -> String { directory + "/jobs/\(id).log" }

    /// The files themselves: the VMM's collector wrote at most the caps.
    public func readOutput(_ id: String, log: Bool) throws(RunnerError) -> [UInt8] {
        guard try job(id) != nil else { throw .jobNotFound(id) }
        return (try? readFile(log ? logPath(id) : outputPath(id))) ?? []
    }

    /// The jobs table's columns in order: what `SELECT *` and `RETURNING *`
    /// give, checked at open. `job(_:)` reads them by position; by name,
    /// each of 22 lookups scans the columns (tens of microseconds a row).
    static let jobColumns = ["seq", "id", "function", "version", "state", "invocation", "attempts", "maxAttempts", "exitStatus",
                             "error", "idempotencyKey", "payload", "createdAt", "startedAt", "finishedAt", "notBefore",
                             "outputBytes", "logBytes", "queueMs", "restoreMs", "runMs", "totalMs"]

    /// A job from a `SELECT *` (or `RETURNING *`) row of the jobs table.
    static func job(_ row: Row) -> JobRecord {
        JobRecord(id: row[1], function: row[2], version: row[3],
                  state: JobState(rawValue: row[4]) ?? .failed, invocation: Invocation(rawValue: row[5]) ?? .async,
                  attempts: row[6], maxAttempts: row[7], exitStatus: row[8], error: row[9],
                  idempotencyKey: row[10], createdAt: row[12], startedAt: row[13],
                  finishedAt: row[14], notBefore: row[15], outputBytes: row[16], logBytes: row[17],
                  timings: JobTimings(queueMs: row[18], restoreMs: row[19], runMs: row[20], totalMs: row[21]),
                  seq: row[0])
    }
}

/// One function version: what a snapshot and a warm pool belong to.
public struct VersionKey: Hashable, Sendable, CustomStringConvertible {
    public var function: String
    public var version: Int
    public init(function: String, version: Int) { (self.function, self.version) = (function, version) }
    public var description: String { "\(function)@\(version)" }
}

/// Checkpoints the store's WAL into the database from its own connection
/// and thread, once about 200 write transactions have gone in (about the
/// 1,000 pages of SQLite's own automatic checkpoint). That automatic
/// checkpoint runs inside the commit that crosses its limit, so one invoke
/// in about a hundred paid the checkpoint's fsyncs (5 ms here); a passive
/// checkpoint takes no write lock, and commits go on beside it. Not more
/// often: the first commit after a complete checkpoint restarts the WAL
/// and syncs its header (0.5 ms), on whichever invoke made it.
final class WALCheckpointer: Sendable {
    static let writesPerCheckpoint = 200
    private let writes = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    private let wake = DispatchSemaphore(value: 0)

    init(path: String) throws {
        let connection = try DatabaseQueue(path: path)
        let thread = Thread { [self] in
            while !stopped.load(ordering: .acquiring) {
                _ = wake.wait(timeout: .now() + 1)
                guard writes.load(ordering: .relaxed) >= Self.writesPerCheckpoint else { continue }
                writes.store(0, ordering: .relaxed)
                _ = try? connection.writeWithoutTransaction { try $0.checkpoint(.passive) }
            }
        }
        thread.name = "swiftletd-wal"
        thread.start()
    }

    func written() { writes.add(1, ordering: .relaxed) }

    /// The thread ends (closing the connection checkpoints what is left).
    func stop() {
        stopped.store(true, ordering: .releasing)
        wake.signal()
    }
}
