import Logging

/// The runner's durable state, whichever engine holds it: SQLite on one
/// host (`SQLiteStore`, the default) or PostgreSQL shared by a fleet
/// (`PostgresStore`, `serve --store postgres://...`). The scheduler and the
/// HTTP API see only this; the store tests run every case against both.
///
/// Every method is one transaction. Requirements are
/// `nonisolated(nonsending)`: they run on the caller's executor, so the
/// SQLite store (synchronous underneath) costs the runner's actor no hop,
/// and PostgreSQL's suspend only where they wait on the network. Errors
/// are `RunnerError`: `.internalFailure` naming the operation, or
/// `.storeUnavailable` while the database cannot be reached.
public protocol JobStore: Sendable {
    // MARK: Functions

    /// Makes `spec` the function's current version: a new version when it
    /// differs from the current one (spec or image content). Returns the
    /// record and whether the function is new.
    nonisolated(nonsending) func deploy(name: String, spec: FunctionSpec, imagePath: String, imageSha256: String,
                                        now: Double) async throws(RunnerError) -> (FunctionRecord, created: Bool)
    /// The function's current version.
    nonisolated(nonsending) func function(_ name: String) async throws(RunnerError) -> FunctionRecord?
    /// Every function's current version, by name.
    nonisolated(nonsending) func functions() async throws(RunnerError) -> [FunctionRecord]
    /// One version (current or not), for jobs queued before a change.
    nonisolated(nonsending) func version(_ name: String, _ version: Int) async throws(RunnerError) -> FunctionRecord?
    /// Removes the function; its queued jobs are cancelled. False when there was none.
    nonisolated(nonsending) func removeFunction(_ name: String, now: Double) async throws(RunnerError) -> Bool
    /// The versions that queued or running jobs, or a current function, still need.
    nonisolated(nonsending) func versionsInUse() async throws(RunnerError) -> Set<VersionKey>

    // MARK: Jobs

    /// Inserts a queued job, or returns the job an earlier submit with the
    /// same idempotency key made (`replayed` true).
    nonisolated(nonsending) func insertJob(_ job: JobRecord, payload: [UInt8]?) async throws(RunnerError) -> (JobRecord, replayed: Bool)
    /// A synchronous invoke that got its slot at once: inserted running,
    /// with its first attempt, in one transaction.
    nonisolated(nonsending) func insertRunningJob(_ job: JobRecord, now: Double, queueMs: Double) async throws(RunnerError) -> JobRecord
    nonisolated(nonsending) func job(_ id: String) async throws(RunnerError) -> JobRecord?
    nonisolated(nonsending) func payload(_ id: String) async throws(RunnerError) -> [UInt8]
    /// Jobs newest first, after the cursor (a seq), filtered.
    nonisolated(nonsending) func jobs(function: String?, state: JobState?, limit: Int, before cursor: Int64?) async throws(RunnerError) -> [JobRecord]
    nonisolated(nonsending) func countQueued() async throws(RunnerError) -> Int
    /// The earliest time a queued job becomes due (retry backoff), if any.
    nonisolated(nonsending) func nextDue() async throws(RunnerError) -> Double?
    /// queued → running for one attempt. False when the job is no longer
    /// queued (cancelled meanwhile, or another host took it).
    nonisolated(nonsending) func markRunning(_ id: String, now: Double, queueMs: Double) async throws(RunnerError) -> Bool
    /// Attempt `attempt` of a running job ends: final, or queued again for
    /// a retry at `retryAt`. Fenced: it changes the job only while that
    /// attempt is still the job's current one and still this host's
    /// (a rescued job's late result changes nothing). Returns the job as
    /// it is afterwards.
    nonisolated(nonsending) func finishAttempt(_ id: String, attempt: Int, state: JobState, exitStatus: Int?, error: String?,
                                               outcome: String, now: Double, retryAt: Double?, timings: JobTimings,
                                               outputBytes: Int, logBytes: Int) async throws(RunnerError) -> JobRecord?
    /// A queued job cancelled before it ran; nil when it is not queued.
    nonisolated(nonsending) func cancelQueued(_ id: String, now: Double) async throws(RunnerError) -> JobRecord?
    /// After a restart: the jobs this host left running are queued again
    /// while they have attempts left (at-least-once), else failed with
    /// "runner restarted"; its queued sync invocations (their caller is
    /// gone) fail the same way. Returns (requeued, failed).
    nonisolated(nonsending) func recover(now: Double) async throws(RunnerError) -> (requeued: Int, failed: Int)
    /// A throttled synchronous invoke that never ran: deleted while still
    /// queued. False when it was not (it started meanwhile).
    nonisolated(nonsending) func deleteJob(_ id: String) async throws(RunnerError) -> Bool
    /// The job an earlier submit with this key made, if any.
    nonisolated(nonsending) func replayedJob(function: String, key: String) async throws(RunnerError) -> JobRecord?
    /// The oldest due queued job of each function.
    nonisolated(nonsending) func dueHeads(now: Double) async throws(RunnerError) -> [JobRecord]
    /// The oldest due queued job of one function.
    nonisolated(nonsending) func dueHead(function: String, now: Double) async throws(RunnerError) -> JobRecord?
    /// Deletes finished jobs older than the cutoff, with their output.
    nonisolated(nonsending) func prune(finishedBefore cutoff: Double) async throws(RunnerError) -> Int
    /// Job counts by function and state (the metrics).
    nonisolated(nonsending) func jobCounts() async throws(RunnerError) -> [(function: String, state: JobState, count: Int)]

    // MARK: Output

    /// Where this host's VMM writes a job's stdout and stderr while it runs
    /// (capped by the VMM's collector). A store that keeps output elsewhere
    /// takes the files in at `finishAttempt`.
    func outputPath(_ id: String) -> String
    func logPath(_ id: String) -> String
    /// A job's stdout (or stderr): what there is so far.
    nonisolated(nonsending) func readOutput(_ id: String, log: Bool) async throws(RunnerError) -> [UInt8]
}

/// The store `serve --store` names: SQLite under the state directory when
/// there is no URL, else the PostgreSQL database it names, migrated to the
/// current schema.
public func openStore(_ url: String?, stateDirectory: String, hostID: String, leaseSeconds: Double = 30,
                      logger: Logger) async throws(RunnerError) -> any JobStore {
    guard let url else { return try SQLiteStore(directory: stateDirectory) }
    let parsed: PostgresURL
    do { parsed = try PostgresURL(url) } catch { throw .badRequest("--store: \(error)") }
    // A database that is not reachable yet (starting, or its network not up)
    // is waited for, up to a minute; anything else fails at once.
    let deadline = ContinuousClock.now + .seconds(60)
    while true {
        do {
            return try await PostgresStore.open(parsed, stateDirectory: stateDirectory, hostID: hostID, leaseSeconds: leaseSeconds, logger: logger)
        } catch .storeUnavailable(let why) where ContinuousClock.now < deadline {
            logger.warning("waiting for the database", metadata: ["store": "\(parsed)", "error": "\(why)"])
            try? await Task.sleep(for: .seconds(1))
        }
    }
}
