import Foundation
import Logging
import SwiftletSys

/// How the runner is set up (`swiftletd serve` options).
public struct RunnerConfig: Sendable {
    public var stateDirectory: String
    /// The `swiftlet` binary that runs each VM.
    public var swiftlet: String
    public var kernel: String?
    /// What `"image": "default"` means.
    public var defaultRootfs: String
    /// Where a function's image may come from (`serve --image-root`): its
    /// path, links resolved, must lie under one of these. nil: anywhere the
    /// daemon can read, so deploying is as trusted as the host's root.
    public var imageRoots: [String]?
    /// VM slots: running VMs plus warm ones.
    public var maxVMs: Int
    /// Guest memory of running and warm VMs never exceeds this.
    public var memoryBudgetMiB: Int
    /// Queued jobs (async and waiting sync) beyond this get 429.
    public var maxQueued: Int = 10_000
    /// How long a synchronous invoke waits for a slot before 429.
    public var syncWaitSeconds: Double = 30
    /// Finished jobs (and their output) are deleted this long after.
    public var retentionSeconds: Double = 7 * 86400
    public var drainTimeoutSeconds: Double = 30
    public var jail: Bool
    /// Stdout cap (Lambda's 6 MB response limit).
    public var outputLimit: Int = 6 * 1024 * 1024
    /// Stderr kept per job.
    public var logLimit: Int = 1024 * 1024
    public var syncPayloadLimit: Int = 6 * 1024 * 1024
    public var asyncPayloadLimit: Int = 1024 * 1024
    /// The first retry's delay; each later one doubles, with jitter.
    public var retryBaseSeconds: Double = 1
    /// Warm VMs on this host, all pools together (0: no warm pools).
    public var maxWarm: Int = .max
    /// Added to every VMM's nice value: a restore or a guest yields to the
    /// daemon's short bursts (accepting, spawning, answering), whose wake-up
    /// latency is the invoke's; VMs still share the CPU fairly among
    /// themselves. With 0, a cold spawn beside a restoring warm VM took
    /// 2 ms at the median on 2 CPUs (0.5 ms at 5).
    public var vmNice: Int = 5
    /// Where other hosts and clients reach this runner's API (shown in `GET /v1/hosts`).
    public var advertiseAddress = ""
    /// Where snapshots live (default: `<state>/snapshots`); runners on one
    /// machine may share one.
    public var snapshotDirectory: String?

    public init(stateDirectory: String, swiftlet: String, kernel: String?, defaultRootfs: String, maxVMs: Int,
                memoryBudgetMiB: Int, jail: Bool) {
        (self.stateDirectory, self.swiftlet, self.kernel, self.defaultRootfs) = (stateDirectory, swiftlet, kernel, defaultRootfs)
        (self.maxVMs, self.memoryBudgetMiB, self.jail) = (maxVMs, memoryBudgetMiB, jail)
    }
}

/// What a synchronous invoke returns.
public struct InvokeResult: Sendable {
    public var job: JobRecord
    public var output: [UInt8]
    public var logTail: [UInt8]
    public var outcome: AttemptOutcome
    /// CLOCK_MONOTONIC ns: the VMM given the job, and reaped (0 when none ran).
    public var vmHandedOverAt: UInt64
    public var vmExitedAt: UInt64
}

/// The job runner: functions, the queue, VM slots, warm pools. One actor
/// owns all scheduling state; VMs run on their own threads (VMProcess), and
/// the store is a `JobStore` (SQLite, or PostgreSQL shared by a fleet: see RunnerFleet.swift).
///
/// Scheduling: a job needs a slot (`maxVMs`), its guest memory within the
/// budget, and its function under its `concurrency`. When a slot frees,
/// the function served least recently among those with work goes next
/// (sync waiters first within a function), so one busy function cannot
/// starve another.
public actor Runner {
    public nonisolated let config: RunnerConfig
    public nonisolated let store: any JobStore
    public nonisolated let metrics: RunnerMetrics
    let snapshots: Snapshots
    /// Two spawning threads: a job's VMM never waits behind the start of a
    /// warm VM or a snapshot's boot (a spawn blocks its thread until the
    /// child has exec'd, milliseconds on a busy host).
    let spawner: Spawner
    let backgroundSpawner: Spawner
    let logger: Logger

    struct Running {
        var function: String
        var memoryMiB: Int
        var vm: VMProcess?
        /// A warm VM of the job's version, handed to it at admission.
        var reservedWarm: VMProcess?
        var cancelRequested = false
        /// The attempt it runs (0 until known): what its lease names.
        var attempt = 0
        /// The fleet took its lease back (or this host could not extend it
        /// in time): its VM is stopped and its result discarded.
        var leaseLost = false
        /// CLOCK_MONOTONIC ns until which its lease surely holds: the start
        /// of the last statement that set it (claim, insert or heartbeat)
        /// plus one lease, which the database's own expiry is never before.
        var leaseHeldUntil: UInt64 = .max
        /// Its VM has ended and its end is being recorded: a heartbeat that
        /// no longer finds its lease raced that record, and lost nothing.
        var finishing = false
    }
    var running: [String: Running] = [:]
    var runningPerFunction: [String: Int] = [:]
    private struct Waiter {
        var job: JobRecord
        var memoryMiB: Int
        var concurrency: Int
        var continuation: CheckedContinuation<Bool, Never>
    }
    /// Synchronous invokes waiting for a slot, per function, oldest first.
    private var waiters: [String: [Waiter]] = [:]
    private var lastServed: [String: UInt64] = [:]
    private var serveCounter: UInt64 = 0
    var finalWaiters: [String: [UUID: CheckedContinuation<Void, Never>]] = [:]
    var warm: [VersionKey: [(vm: VMProcess, memoryMiB: Int)]] = [:]
    private var warmFilling: Set<VersionKey> = []
    var draining = false
    /// Snapshot directories known to exist, by shape: the hot path checks
    /// one with access(2) instead of a hop to the Snapshots actor.
    private var readySnapshots: [String: String] = [:]
    private var pumpScheduled = false
    private var pumping = false
    private var pumpAgain = false
    var wakeTask: Task<Void, Never>?
    /// The shared store when this runner is one host of a fleet (see RunnerFleet.swift).
    public nonisolated let fleet: (any FleetStore)?
    var fleetTasks: [Task<Void, Never>] = []
    /// CLOCK_MONOTONIC ns until which this host's leases surely hold: the
    /// start of the last heartbeat the database took, plus one lease.
    var leasesHoldUntil: UInt64 = .max
    /// SHA-256 of the images verified here (what this host may claim).
    var verifiedImages: [String] = []
    var imageDigests: [String: ImageDigest] = [:]
    /// Image references' ext4 on this host (see `refreshImages`).
    var preparedImages: [String: PreparedImageState] = [:]
    var heartbeatFailures = 0
    var ticks = 0
    /// Attempts' ends the store could not take (an outage): retried on
    /// every tick until it does, oldest first.
    var pendingFinishes: [PendingFinish] = []
    static let maxPendingFinishes = 10_000

    /// `store`: `SQLiteStore` under the state directory, or a `PostgresStore`.
    public init(config: RunnerConfig, store: any JobStore, logger: Logger) {
        self.config = config
        self.logger = logger
        self.store = store
        fleet = store as? any FleetStore
        metrics = RunnerMetrics()
        spawner = Spawner(nice: config.vmNice)
        backgroundSpawner = Spawner(nice: config.vmNice)
        snapshots = Snapshots(directory: config.snapshotDirectory ?? config.stateDirectory + "/snapshots", swiftlet: config.swiftlet, kernel: config.kernel, spawner: backgroundSpawner,
                              metrics: metrics)
    }

    /// After a restart: jobs left running are re-queued or failed (see
    /// `Store.recover`), then the queue starts moving.
    public func start() async throws(RunnerError) {
        let (requeued, failed) = try await store.recover(now: Date().timeIntervalSince1970)
        if requeued + failed > 0 {
            logger.info("recovered jobs after a restart", metadata: ["requeued": "\(requeued)", "failed": "\(failed)"])
        }
        if let fleet { try await joinFleet(fleet) }
        await pump()
        await refillWarmPools()
    }

    // MARK: Functions

    public func deploy(name: String, spec: FunctionSpec) async throws(RunnerError) -> (FunctionRecord, created: Bool) {
        guard FunctionSpec.isValidName(name) else { throw .badRequest("function name '\(name)' must be 1 to 64 letters, digits, '-' or '_'") }
        try spec.validate()
        try checkImageRoot(spec)
        var spec = spec
        let imagePath = try await resolveImage(&spec)
        let resolved = URL(fileURLWithPath: imagePath).resolvingSymlinksInPath().path
        guard access(resolved, R_OK) == 0 else {
            throw .badRequest("image \(spec.image == FunctionSpec.defaultImage ? "default (\(imagePath))" : imagePath) does not exist or is not readable")
        }
        // Hashing a large image takes seconds: not on the actor.
        let sha = try await ChildProcess.offPool { () throws(RunnerError) in try Snapshots.sha256(ofFile: resolved) }
        let result = try await store.deploy(name: name, spec: spec, imagePath: resolved, imageSha256: sha, now: Date().timeIntervalSince1970)
        logger.info("function deployed", metadata: ["function": "\(name)", "version": "\(result.0.version)"])
        if let fleet {
            if let reference = spec.imageReference { rememberPrepared(reference, path: resolved, sha256: sha) }
            await refreshImages(fleet)
        }
        await collectGarbage()
        await refillWarmPools()
        return result
    }

    /// With `--image-root`, an image outside the roots is refused: a deploy
    /// request must not make a host file or directory (`dir:/root`) a
    /// handler's root filesystem.
    func checkImageRoot(_ spec: FunctionSpec) throws(RunnerError) {
        guard let roots = config.imageRoots, let path = spec.imageHostPath else { return }
        guard let resolved = Self.realPath(path),
              roots.compactMap(Self.realPath).contains(where: { resolved == $0 || resolved.hasPrefix($0 == "/" ? "/" : $0 + "/") })
        else { throw .badRequest("image \(spec.image) is not under this runner's image roots (serve --image-root)") }
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The ext4 image a spec's `image` boots. An image other than ext4 is
    /// converted first (`swiftlet image prepare`, cached by swiftlet) and
    /// the ext4 it made is the one; a path found not to be ext4 is marked
    /// `imageConverted` in the spec.
    func resolveImage(_ spec: inout FunctionSpec) async throws(RunnerError) -> String {
        spec.imageConverted = nil
        switch spec.imageKind {
        case .builtIn:
            return config.defaultRootfs
        case let .ext4(path):
            switch Self.probeImage(path) {
            case .missing: throw .badRequest("image \(path) does not exist or is not readable")
            case .other: throw .badRequest("image \(spec.image): not an ext4 image (no ext4 superblock)")
            case .ext4: return path
            }
        case .reference:
            return try await prepareImage(spec.image)
        case let .path(path):
            switch Self.probeImage(path) {
            case .missing:
                throw .badRequest("image \(path) does not exist or is not readable")
            case .ext4:
                if spec.user != nil {
                    throw .badRequest("'user' needs an image run through Swiftlet's agent initramfs: \(path) is an ext4 image, booted as it is " +
                                      "(its own init runs the handler as root); give it as ext4:\(path)")
                }
                return path
            case .other:
                spec.imageConverted = true
                return try await prepareImage(path)
            }
        }
    }

    enum ImageProbe { case missing, ext4, other }

    /// What is at an image path: an ext4 image (the superblock's magic
    /// 0xEF53 at byte 1080), something else (a directory, a tarball, ...),
    /// or nothing readable.
    static func probeImage(_ path: String) -> ImageProbe {
        var st = stat()
        guard stat(path, &st) == 0, access(path, R_OK) == 0 else { return .missing }
        guard st.st_mode & S_IFMT == S_IFREG else { return .other }
        guard let file = try? OwnedFD(opening: path, flags: O_RDONLY) else { return .missing }
        var magic: [UInt8] = [0, 0]
        let n = magic.withUnsafeMutableBytes { b in retryingEINTR { pread(file.raw, b.baseAddress, 2, 1080) } }
        return n == 2 && magic == [0x53, 0xEF] ? .ext4 : .other
    }

    /// `swiftlet image prepare REF`: the path of the image's ext4, converted
    /// now or found in swiftlet's image cache. It runs as a child on a
    /// thread of its own (a big image takes a minute): the actor goes on
    /// serving meanwhile. A conversion that fails is the request's fault
    /// (a 400 with swiftlet's one line).
    func prepareImage(_ reference: String, log: Bool = true) async throws(RunnerError) -> String {
        let started = Clock.monotonicNanos()
        let child = try await ChildProcess.run(path: config.swiftlet, argv: ["swiftlet", "image", "prepare", reference], spawner: backgroundSpawner)
        guard child.succeeded else { throw .badRequest(child.errorLine) }
        let lines = String(decoding: child.stdout, as: UTF8.self).split(separator: "\n")
        guard let path = lines.last.map(String.init), path.hasPrefix("/") else {
            throw .internalFailure("`swiftlet image prepare \(reference)` printed no path")
        }
        if log {
            logger.info("image prepared", metadata: ["image": "\(reference)", "ext4": "\(path)",
                                                     "ms": "\(Double(Clock.monotonicNanos() - started) / 1e6)"])
        }
        return path
    }

    public func removeFunction(_ name: String) async throws(RunnerError) {
        guard try await store.removeFunction(name, now: Date().timeIntervalSince1970) else { throw .functionNotFound(name) }
        for key in warm.keys where key.function == name { for w in warm.removeValue(forKey: key) ?? [] { w.vm.discard() } }
        updateGauges()
        await collectGarbage()
        logger.info("function removed", metadata: ["function": "\(name)"])
    }

    // MARK: Invocations

    /// A queued job (Lambda `Event`, or `POST /v1/functions/F/jobs`).
    public func submit(function name: String, payload: [UInt8], idempotencyKey: String?) async throws(RunnerError) -> (JobRecord, replayed: Bool) {
        guard !draining else { throw .draining }
        guard let f = try await store.function(name) else { throw .functionNotFound(name) }
        guard payload.count <= config.asyncPayloadLimit else { throw .payloadTooLarge(limit: config.asyncPayloadLimit) }
        if let key = idempotencyKey, let existing = try await store.replayedJob(function: name, key: key) { return (existing, true) }
        guard try await store.countQueued() < config.maxQueued else {
            throw .tooManyRequests(reason: .queueFull, retryAfterSeconds: 5)
        }
        let now = Date().timeIntervalSince1970
        let job = JobRecord(id: JobID.make(), function: name, version: f.version, state: .queued, invocation: .async, attempts: 0,
                            maxAttempts: f.spec.retries + 1, exitStatus: nil, error: nil, idempotencyKey: idempotencyKey,
                            createdAt: now, startedAt: nil, finishedAt: nil, notBefore: now, outputBytes: 0, logBytes: 0,
                            timings: JobTimings(), seq: 0)
        let (stored, replayed) = try await store.insertJob(job, payload: payload)
        if !replayed {
            logger.info("job queued", metadata: ["job": "\(stored.id)", "function": "\(name)"])
            schedulePump()
        }
        return (stored, replayed)
    }

    /// A synchronous invoke of the function's version `f` (as the caller
    /// read it from the store, so that the hot path reads it once): waits
    /// for a slot (up to `syncWaitSeconds`, then 429), runs, and returns the
    /// output. `dryRun` only validates. The caller calls `responded()` once
    /// the response is out: warm pools refill then, so that a restore does
    /// not compete with the response for the CPU.
    public func invoke(_ f: FunctionRecord, payload: [UInt8], dryRun: Bool = false) async throws(RunnerError) -> InvokeResult? {
        guard !draining else { throw .draining }
        let name = f.name
        guard payload.count <= config.syncPayloadLimit else { throw .payloadTooLarge(limit: config.syncPayloadLimit) }
        if dryRun { return nil }
        let queuedSync = waiters.values.reduce(0) { $0 + $1.count }
        guard queuedSync < config.maxQueued else { throw .tooManyRequests(reason: .queueFull, retryAfterSeconds: 1) }
        let accepted = Clock.monotonicNanos()
        let now = Date().timeIntervalSince1970
        var job = JobRecord(id: JobID.make(), function: name, version: f.version, state: .queued, invocation: .sync, attempts: 0,
                            maxAttempts: 1, exitStatus: nil, error: nil, idempotencyKey: nil, createdAt: now, startedAt: nil,
                            finishedAt: nil, notBefore: now, outputBytes: 0, logBytes: 0, timings: JobTimings(), seq: 0)
        // A slot now: the job is recorded running at once (one transaction on
        // the hot path). Else it is recorded queued and waits in the
        // function's line until a slot frees.
        let queueMs: Double
        if tryAdmit(function: name, memoryMiB: f.spec.memoryMiB, concurrency: f.spec.concurrency, jobID: job.id, version: f.version) {
            queueMs = Double(Clock.monotonicNanos() - accepted) / 1e6
            if let fleet { running[job.id]?.leaseHeldUntil = Clock.monotonicNanos() + fleet.leaseNanos }
            do { job = try await store.insertRunningJob(job, now: Date().timeIntervalSince1970, queueMs: queueMs) } catch {
                release(jobID: job.id)
                throw error
            }
        } else if fleet != nil {
            // No slot here: the job goes to the fleet's queue, and whichever
            // host has room (this one included) runs it.
            return try await invokeThroughQueue(f, job: job, payload: payload)
        } else {
            job = try await store.insertJob(job, payload: nil).0
            let jobID = job.id
            let timeout = config.syncWaitSeconds
            let granted = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                waiters[name, default: []].append(Waiter(job: job, memoryMiB: f.spec.memoryMiB, concurrency: f.spec.concurrency, continuation: c))
                updateGauges()
                Task { [weak self] in
                    try? await Task.sleep(for: .seconds(timeout))
                    await self?.expireWaiter(function: name, jobID: jobID)
                }
                schedulePump()
            }
            if !granted {
                if let j = try? await store.job(job.id), j.state == .cancelled { throw .alreadyFinal(id: job.id, state: .cancelled) }
                if draining { throw .draining }
                // A throttled invoke never ran: it leaves no job behind (as Lambda's 429).
                _ = try? await store.deleteJob(job.id)
                let atLimit = (runningPerFunction[name] ?? 0) >= f.spec.concurrency
                throw .tooManyRequests(reason: atLimit ? .functionConcurrencyLimitExceeded : .concurrentInvocationLimitExceeded,
                                       retryAfterSeconds: 1)
            }
            queueMs = Double(Clock.monotonicNanos() - accepted) / 1e6
            guard try await store.markRunning(job.id, now: Date().timeIntervalSince1970, queueMs: queueMs) else {
                release(jobID: job.id)
                throw .alreadyFinal(id: job.id, state: .cancelled)
            }
        }
        let (result, final) = await execute(jobID: job.id, version: f, payload: payload, invocation: .sync, attempt: 1, maxAttempts: 1,
                                            createdAt: now, queueMs: queueMs)
        var output: [UInt8] = []
        if let r = result, case .exited(0) = r.outcome {
            if let o = r.output { output = o } else { output = (try? await store.readOutput(job.id, log: false)) ?? [] }
        }
        return InvokeResult(job: final ?? job, output: output, logTail: result?.logTail ?? [], outcome: result?.outcome ?? .infrastructure("not run"),
                            vmHandedOverAt: result?.handedOverAt ?? 0, vmExitedAt: result?.exitedAt ?? 0)
    }

    private func expireWaiter(function: String, jobID: String) {
        guard var line = waiters[function], let i = line.firstIndex(where: { $0.job.id == jobID }) else { return }
        let w = line.remove(at: i)
        waiters[function] = line.isEmpty ? nil : line
        updateGauges()
        w.continuation.resume(returning: false)
    }

    /// Takes a slot for the job if one is free now. A warm VM of the job's
    /// own version is its slot: it is reserved for the job. Warm VMs of
    /// other versions give way.
    func tryAdmit(function: String, memoryMiB: Int, concurrency: Int, jobID: String, version: Int) -> Bool {
        guard (runningPerFunction[function] ?? 0) < concurrency else { return false }
        let key = VersionKey(function: function, version: version)
        var reserved: VMProcess?
        if let vm = takeWarm(key) {
            reserved = vm
        } else {
            if !hasRoom(memoryMiB: memoryMiB) { evictWarm(except: key, toFit: memoryMiB) }
            guard hasRoom(memoryMiB: memoryMiB) else { return false }
        }
        running[jobID] = Running(function: function, memoryMiB: memoryMiB, vm: nil, reservedWarm: reserved)
        runningPerFunction[function, default: 0] += 1
        serveCounter += 1
        lastServed[function] = serveCounter
        updateGauges()
        return true
    }

    private var slotsUsed: Int { running.count + warm.values.reduce(0) { $0 + $1.count } }
    var memoryUsed: Int { running.values.reduce(0) { $0 + $1.memoryMiB } + warm.values.reduce(0) { $0 + $1.reduce(0) { $0 + $1.memoryMiB } } }

    func hasRoom(memoryMiB: Int) -> Bool {
        slotsUsed < config.maxVMs && memoryUsed + memoryMiB <= config.memoryBudgetMiB
    }

    /// Warm VMs give way to real work: the oldest of other versions go first.
    private func evictWarm(except key: VersionKey?, toFit memoryMiB: Int) {
        for k in warm.keys.sorted(by: { $0.description < $1.description }) where k != key {
            while !hasRoom(memoryMiB: memoryMiB), var pool = warm[k], !pool.isEmpty {
                let w = pool.removeFirst()
                warm[k] = pool.isEmpty ? nil : pool
                w.vm.discard()
            }
            if hasRoom(memoryMiB: memoryMiB) { return }
        }
    }

    func release(jobID: String) {
        guard let r = running.removeValue(forKey: jobID) else { return }
        if let w = r.reservedWarm, r.vm == nil { w.discard() }
        runningPerFunction[r.function, default: 1] -= 1
        if runningPerFunction[r.function] == 0 { runningPerFunction[r.function] = nil }
        schedulePump()
    }

    /// Runs `pump` after the current actor turn, once however many ask:
    /// a finished invoke's response is not held up by the queue's queries.
    func schedulePump() {
        guard !pumpScheduled else { return }
        pumpScheduled = true
        Task { await self.pump() }
    }

    /// Starts what can start: sync waiters and due queued jobs, the least
    /// recently served function first. One pass at a time: a store that
    /// suspends (PostgreSQL) lets other calls in, and one that asks for a
    /// pump meanwhile gets another pass after this one.
    func pump() async {
        pumpScheduled = false
        guard !pumping else { pumpAgain = true; return }
        pumping = true
        defer { pumping = false }
        repeat {
            pumpAgain = false
            await pumpOnce()
        } while pumpAgain
    }

    private func pumpOnce() async {
        guard !draining else { return }
        if let fleet { return await claimWork(fleet) }
        var due: [String: JobRecord] = [:]
        do {
            for job in try await store.dueHeads(now: Date().timeIntervalSince1970) { due[job.function] = job }
        } catch {
            logger.error("reading the queue failed", metadata: ["error": "\(error)"])
        }
        var specs: [String: FunctionRecord] = [:]
        var blocked = Set<String>()
        while true {
            let candidates = Set(waiters.keys).union(due.keys).subtracting(blocked)
            guard let function = candidates.min(by: { (lastServed[$0] ?? 0, $0) < (lastServed[$1] ?? 0, $1) }) else { break }
            if let w = waiters[function]?.first {
                guard tryAdmit(function: function, memoryMiB: w.memoryMiB, concurrency: w.concurrency, jobID: w.job.id, version: w.job.version) else {
                    blocked.insert(function)
                    continue
                }
                waiters[function]!.removeFirst()
                if waiters[function]!.isEmpty { waiters[function] = nil }
                w.continuation.resume(returning: true)
                continue
            }
            guard let job = due[function] else { blocked.insert(function); continue }
            let version: FunctionRecord
            if let v = specs["\(function)@\(job.version)"] {
                version = v
            } else if let v = try? await store.version(function, job.version) {
                version = v
                specs["\(function)@\(job.version)"] = v
            } else {
                await failVersionGone(job)
                due[function] = nil
                continue
            }
            guard tryAdmit(function: function, memoryMiB: version.spec.memoryMiB, concurrency: version.spec.concurrency, jobID: job.id, version: job.version) else {
                blocked.insert(function)
                continue
            }
            due[function] = nil
            let queueMs = max(0, (Date().timeIntervalSince1970 - job.notBefore) * 1000)
            guard (try? await store.markRunning(job.id, now: Date().timeIntervalSince1970, queueMs: queueMs)) == true else {
                release(jobID: job.id)
                continue
            }
            Task { await self.runQueued(job: job, version: version, queueMs: queueMs) }
            // The next due job of this function, if any.
            if let next = try? await store.dueHead(function: function, now: Date().timeIntervalSince1970) { due[function] = next }
        }
        await scheduleWakeForBackoff()
        updateGauges()
    }

    /// A queued job whose function version no longer exists cannot run: failed.
    func failVersionGone(_ job: JobRecord) async {
        _ = try? await store.finishAttempt(job.id, attempt: job.attempts, state: .failed, exitStatus: nil, error: "its function version is gone",
                                           outcome: "no version", now: Date().timeIntervalSince1970, retryAt: nil, timings: JobTimings(),
                                           outputBytes: 0, logBytes: 0)
    }

    /// Jobs waiting out a retry backoff need a pump when it ends.
    private func scheduleWakeForBackoff() async {
        guard let next = try? await store.nextDue(), next > Date().timeIntervalSince1970 else { return }
        wakeTask?.cancel()
        let delay = next - Date().timeIntervalSince1970
        wakeTask = Task { [weak self] in
            try? await Task.sleep(for: .seconds(max(0.01, delay)))
            guard !Task.isCancelled else { return }
            await self?.pump()
        }
    }

    /// A synchronous invoke's response has been sent (or failed to be).
    public nonisolated func responded() {
        Task { await self.refillWarmPools() }
    }

    private func runQueued(job: JobRecord, version: FunctionRecord, queueMs: Double) async {
        let payload = (try? await store.payload(job.id)) ?? []
        _ = await execute(jobID: job.id, version: version, payload: payload, invocation: .async, attempt: job.attempts + 1,
                          maxAttempts: job.maxAttempts, createdAt: job.createdAt, queueMs: queueMs)
    }

    /// Runs one attempt in the slot already taken, records it, frees the slot.
    func execute(jobID: String, version f: FunctionRecord, payload: [UInt8], invocation: Invocation, attempt: Int,
                         maxAttempts: Int, createdAt: Double, queueMs: Double) async -> (VMResult?, JobRecord?) {
        let slotAt = Clock.monotonicNanos()
        running[jobID]?.attempt = attempt
        var result: VMResult?
        var failure: String?
        do {
            let vm: VMProcess
            if let w = running[jobID]?.reservedWarm {
                vm = w
            } else {
                let shape = Snapshots.shape(f)
                let dir: String
                if let known = readySnapshots[shape], access(known + "/state", R_OK) == 0 {
                    dir = known
                } else {
                    dir = try await snapshots.snapshot(for: f)
                    readySnapshots[shape] = dir
                }
                guard running[jobID]?.cancelRequested != true else { throw RunnerError.alreadyFinal(id: jobID, state: .cancelled) }
                vm = try await VMProcess.start(VMLaunch(swiftlet: config.swiftlet, snapshotDirectory: dir, spec: f.spec, jail: config.jail, warm: false),
                                               spawner: spawner)
            }
            running[jobID]?.vm = vm
            if running[jobID]?.cancelRequested == true { vm.stop(.cancelled) }
            logger.info("job started", metadata: ["job": "\(jobID)", "function": "\(f.name)", "attempt": "\(attempt)", "vmm": "\(vm.pid)"])
            result = await vm.run(payload: payload, output: VMOutput(outputPath: store.outputPath(jobID), logPath: store.logPath(jobID),
                                                                    outputLimit: config.outputLimit, logLimit: config.logLimit))
        } catch let e as RunnerError {
            failure = e.description
        } catch {
            failure = "\(error)"
        }
        let outcome = result?.outcome ?? (running[jobID]?.cancelRequested == true ? .cancelled : .infrastructure(failure ?? "not started"))
        let now = Date().timeIntervalSince1970
        let (state, exitStatus, error) = Self.classify(outcome)
        if case .infrastructure = outcome { metrics.spawnFailures.increment() }
        // Lambda's rule for queued invocations: any failure but a cancel is
        // retried while attempts remain. A job the drain stopped is due again
        // at once (it runs after the restart); the queue is durable, so a
        // retry scheduled while draining is not lost either.
        let retry = invocation == .async && state != .succeeded && state != .cancelled && attempt < maxAttempts
        let stoppedByDrain = outcome == .infrastructure(Self.shutdownReason)
        let retryAt = retry ? now + (stoppedByDrain ? 0 : Self.backoff(attempt: attempt, base: config.retryBaseSeconds)) : nil
        var timings = JobTimings(queueMs: queueMs)
        if let r = result {
            timings.restoreMs = r.milliseconds("handover-ms") ?? r.milliseconds("boot-ms")
            timings.runMs = r.milliseconds("job-host-ms")
        }
        timings.totalMs = (now - createdAt) * 1000
        if running[jobID]?.leaseLost == true {
            // Another host has (or will have) the job: this result is not its.
            logger.warning("result discarded: the lease was lost", metadata: ["job": "\(jobID)", "attempt": "\(attempt)", "outcome": "\(outcome)"])
            metrics.leasesLost.increment()
            release(jobID: jobID)
            unlink(store.outputPath(jobID))
            unlink(store.logPath(jobID))
            return (result, nil)
        }
        let finish = PendingFinish(id: jobID, function: f.name, attempt: attempt, state: state, exitStatus: exitStatus, error: error,
                                   outcome: "\(outcome)", now: now, retryAt: retryAt, timings: timings,
                                   outputBytes: result?.outputBytes ?? 0, logBytes: result?.logBytes ?? 0)
        running[jobID]?.finishing = true
        let final: JobRecord?
        do {
            final = try await record(finish)
        } catch .storeUnavailable(let why) {
            // Kept (the output stays in its files) and written when the database returns.
            if pendingFinishes.count < Self.maxPendingFinishes { pendingFinishes.append(finish) }
            logger.warning("the database is unavailable: the job's end is kept until it returns",
                           metadata: ["job": "\(jobID)", "pending": "\(pendingFinishes.count)", "error": "\(why)"])
            final = nil
        } catch {
            logger.error("recording a job's end failed", metadata: ["job": "\(jobID)", "error": "\(error)"])
            final = nil
        }
        if retryAt == nil, let final, final.state.isFinal { metrics.finished(function: f.name, state: final.state) }
        if retryAt == nil {
            metrics.record(function: f.name, queueWait: queueMs / 1000, restore: timings.restoreMs.map { $0 / 1000 },
                           run: timings.runMs.map { $0 / 1000 }, endToEnd: timings.totalMs.map { $0 / 1000 })
        }
        logger.info(retryAt == nil ? "job finished" : "job will be retried", metadata: [
            "job": "\(jobID)", "function": "\(f.name)", "state": "\(state.rawValue)", "attempt": "\(attempt)",
            "outcome": "\(outcome)", "slot_ms": "\(Double(Clock.monotonicNanos() - slotAt) / 1e6)",
        ])
        release(jobID: jobID)
        if retryAt == nil { notifyFinal(jobID) }
        // The pool refills once the job is done, not while it runs: a restore
        // beside the job would take the CPU the warm start was meant to save.
        // A synchronous invoke's refill waits for its response (`responded`).
        if invocation == .async { Task { await self.refillWarmPools() } }
        // Snapshots change owners only by deploy and remove (which collect),
        // or when the last job of a version no longer current ends.
        if fleet == nil, ((try? await store.function(f.name)) ?? nil)?.version != f.version { Task { await self.collectGarbage() } }
        return (result, final)
    }

    static func classify(_ outcome: AttemptOutcome) -> (JobState, Int?, String?) {
        switch outcome {
        case .exited(0): return (.succeeded, 0, nil)
        case let .exited(c): return (.failed, Int(c), "the handler exited with status \(c)")
        case let .signalled(s): return (.failed, 128 + Int(s), "the handler was killed by signal \(s)")
        case .timedOut: return (.timedOut, nil, "the handler ran past its timeout")
        case let .outputTooLarge(limit): return (.failed, nil, "the handler's output went over \(limit) bytes")
        case .cancelled: return (.cancelled, nil, "cancelled")
        case let .infrastructure(why): return (.failed, nil, "the VMM failed: \(why)")
        }
    }

    /// base × 2^(attempt-1), times a jitter in [0.5, 1), at most 5 minutes.
    static func backoff(attempt: Int, base: Double) -> Double {
        let raw = min(300, base * pow(2, Double(max(0, attempt - 1))))
        return raw * Double.random(in: 0.5..<1)
    }

    // MARK: Jobs

    public func job(_ id: String) async throws(RunnerError) -> JobRecord {
        guard let j = try await store.job(id) else { throw .jobNotFound(id) }
        return j
    }

    /// The job once final, or as it is after `seconds`. In a fleet it may
    /// end on another host: a notification wakes the wait, and the store is
    /// read again at least every second (notifications are best-effort).
    public func waitFinal(_ id: String, seconds: Double) async throws(RunnerError) -> JobRecord {
        var j = try await job(id)
        let deadline = Clock.monotonicNanos() + UInt64(max(0, seconds) * 1e9)
        while !j.state.isFinal {
            let now = Clock.monotonicNanos()
            guard now < deadline else { break }
            let slice = min(Double(deadline - now) / 1e9, fleet == nil ? .infinity : 1)
            let token = UUID()
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                finalWaiters[id, default: [:]][token] = c
                Task { [weak self] in
                    try? await Task.sleep(for: .seconds(slice))
                    await self?.resumeWaiter(id, token)
                }
            }
            j = try await job(id)
        }
        return j
    }

    private func resumeWaiter(_ id: String, _ token: UUID) {
        guard let c = finalWaiters[id]?.removeValue(forKey: token) else { return }
        if finalWaiters[id]?.isEmpty == true { finalWaiters[id] = nil }
        c.resume()
    }

    func notifyFinal(_ id: String) {
        for (_, c) in finalWaiters.removeValue(forKey: id) ?? [:] { c.resume() }
    }

    /// Cancels a job: a queued one never runs; a running one's VMM is
    /// stopped at once.
    public func cancel(_ id: String) async throws(RunnerError) -> JobRecord {
        let j = try await job(id)
        if j.state.isFinal { throw .alreadyFinal(id: id, state: j.state) }
        // A sync invoke still waiting for a slot.
        if var line = waiters[j.function], let i = line.firstIndex(where: { $0.job.id == id }) {
            let w = line.remove(at: i)
            waiters[j.function] = line.isEmpty ? nil : line
            _ = try await store.cancelQueued(id, now: Date().timeIntervalSince1970)
            w.continuation.resume(returning: false)
            notifyFinal(id)
            return try await job(id)
        }
        if running[id] != nil {
            running[id]!.cancelRequested = true
            if let vm = running[id]!.vm {
                vm.stop(.cancelled)
                logger.info("job cancel requested", metadata: ["job": "\(id)", "vmm": "\(vm.pid)"])
                // The VMM is killed: answer once it is reaped and the job is final.
                return try await waitFinal(id, seconds: 2)
            }
            // Still preparing (its snapshot being made): final now; the VMM is never started.
            let now = Date().timeIntervalSince1970
            _ = try await store.finishAttempt(id, attempt: j.attempts, state: .cancelled, exitStatus: nil, error: "cancelled", outcome: "cancelled", now: now,
                                        retryAt: nil, timings: JobTimings(totalMs: (now - j.createdAt) * 1000), outputBytes: 0, logBytes: 0)
            notifyFinal(id)
            metrics.finished(function: j.function, state: .cancelled)
            logger.info("job cancelled before its VMM started", metadata: ["job": "\(id)"])
            return try await job(id)
        }
        if let c = try await store.cancelQueued(id, now: Date().timeIntervalSince1970) {
            metrics.finished(function: j.function, state: .cancelled)
            logger.info("job cancelled", metadata: ["job": "\(id)"])
            notifyFinal(id)
            updateGauges()
            return c
        }
        if let fleet, try await fleet.requestCancel(id) {
            // Running on another host: its runner stops the VMM on the notification (or its next heartbeat).
            logger.info("job cancel requested from its host", metadata: ["job": "\(id)"])
            return try await waitFinal(id, seconds: 2)
        }
        return try await job(id)
    }

    /// A job's output or log (what there is so far).
    public nonisolated func readOutput(_ id: String, log: Bool) async throws(RunnerError) -> [UInt8] {
        try await store.readOutput(id, log: log)
    }

    // MARK: Warm pools

    private func takeWarm(_ key: VersionKey) -> VMProcess? {
        guard var pool = warm[key] else { return nil }
        while !pool.isEmpty {
            let w = pool.removeFirst()
            warm[key] = pool.isEmpty ? nil : pool
            // Its slot and memory pass to the job's (already counted there).
            if w.vm.isAlive { updateGauges(); return w.vm }
            logger.warning("a warm VM had died; restoring cold", metadata: ["function": "\(key.function)", "vmm": "\(w.vm.pid)"])
        }
        updateGauges()
        return nil
    }

    /// Tops up every current function's pool to its `warm`, while slots and
    /// memory allow and no job waits (pools never take a slot from work).
    func refillWarmPools() async {
        guard !draining, waiters.isEmpty else { return }
        guard let functions = try? await store.functions() else { return }
        let wanted = Dictionary(functions.map { (VersionKey(function: $0.name, version: $0.version), $0) }, uniquingKeysWith: { a, _ in a })
        // Pools of versions no longer current, or larger than wanted, shrink.
        for (key, pool) in warm {
            let target = wanted[key]?.spec.warm ?? 0
            if pool.count > target {
                for w in pool[target...] { w.vm.discard() }
                warm[key] = target == 0 ? nil : Array(pool[..<target])
            }
        }
        for (key, f) in wanted where f.spec.warm > 0 && !warmFilling.contains(key) {
            let have = warm[key]?.count ?? 0
            let held = warm.values.reduce(0) { $0 + $1.count } + warmFilling.count
            guard have < f.spec.warm, held < config.maxWarm, hasRoom(memoryMiB: f.spec.memoryMiB), (try? await store.dueHeads(now: Date().timeIntervalSince1970).isEmpty) ?? false else { continue }
            warmFilling.insert(key)
            Task { await self.fillOne(key, f) }
        }
        updateGauges()
    }

    private func fillOne(_ key: VersionKey, _ f: FunctionRecord) async {
        defer {
            warmFilling.remove(key)
        }
        do {
            let dir = try await snapshots.snapshot(for: f)
            guard !draining, hasRoom(memoryMiB: f.spec.memoryMiB) else { return }
            let vm = try await VMProcess.start(VMLaunch(swiftlet: config.swiftlet, snapshotDirectory: dir, spec: f.spec, jail: config.jail, warm: true),
                                               spawner: backgroundSpawner)
            warm[key, default: []].append((vm, f.spec.memoryMiB))
        } catch {
            logger.warning("filling a warm pool failed", metadata: ["function": "\(key.function)", "error": "\(error)"])
            return
        }
        updateGauges()
        // One at a time per pool; go on until full.
        Task { await self.refillWarmPools() }
    }

    // MARK: Housekeeping

    func updateGauges() {
        metrics.runningVMs.set(to: Double(running.count))
        metrics.warmVMs.set(to: Double(warm.values.reduce(0) { $0 + $1.count }))
    }

    private func collectGarbage() async {
        guard let inUse = try? await store.versionsInUse() else { return }
        var shapes = Set<String>()
        for key in inUse.union(warm.keys) {
            if let f = try? await store.version(key.function, key.version) { shapes.insert(Snapshots.shape(f)) }
        }
        Task { _ = await snapshots.collect(keeping: shapes) }
    }

    /// Deletes finished jobs past the retention.
    public func prune() async {
        let cutoff = Date().timeIntervalSince1970 - config.retentionSeconds
        if let n = try? await store.prune(finishedBefore: cutoff), n > 0 { logger.info("pruned finished jobs", metadata: ["count": "\(n)"]) }
    }

    public var isDraining: Bool { draining }
    static let shutdownReason = "the runner shut down while it ran"

    /// Graceful shutdown: no new work; running jobs get up to the drain
    /// timeout; what is still running then is stopped and recorded
    /// (re-queued while attempts remain, else failed); warm VMs go.
    public func drain() async {
        draining = true
        wakeTask?.cancel()
        for (_, pool) in warm { for w in pool { w.vm.discard() } }
        warm = [:]
        for (_, line) in waiters { for w in line { w.continuation.resume(returning: false) } }
        waiters = [:]
        let deadline = Date().addingTimeInterval(config.drainTimeoutSeconds)
        while !running.isEmpty && Date() < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        let left = Array(running.keys)
        if !left.isEmpty {
            logger.warning("drain timeout: stopping running jobs", metadata: ["count": "\(left.count)"])
            for id in left { running[id]?.vm?.stop(.infrastructure(Self.shutdownReason)) }
            let hard = Date().addingTimeInterval(5)
            while !running.isEmpty && Date() < hard { try? await Task.sleep(for: .milliseconds(20)) }
        }
        for (id, _) in finalWaiters { notifyFinal(id) }
        await leaveFleet()
    }
}
