import Foundation
import SwiftletSys

/// One attempt's end as the store records it; kept in memory when the
/// store cannot take it (a database outage) and written when it returns.
struct PendingFinish: Sendable {
    var id: String
    var function: String
    var attempt: Int
    var state: JobState
    var exitStatus: Int?
    var error: String?
    var outcome: String
    var now: Double
    var retryAt: Double?
    var timings: JobTimings
    var outputBytes: Int
    var logBytes: Int
}

/// An image file's digest, remembered with what identifies its content
/// cheaply (size, mtime): verified once, not on every heartbeat.
struct ImageDigest: Sendable {
    var size: Int
    var mtime: Int
    var sha256: String
}

/// An image reference's ext4 on this host: what its last
/// `swiftlet image prepare` gave, or why that failed, and when.
struct PreparedImageState: Sendable {
    var path: String?
    var error: String?
    var checkedAt: UInt64 = 0
    var preparing = false
    /// The deployed digest last warned about as not matching (one warning each).
    var warnedAbout: String?
}

/// Fleet mode: the runner as one host of many sharing a PostgreSQL store.
///
/// - Work is claimed from the shared queue (`FleetStore.claim`) when this
///   host has a free slot and memory: on a `work` notification, after each
///   job ends, and at least every second (notifications are best-effort).
/// - Every tick heartbeats: the host's row and every lease it holds are
///   extended. A lease the store says is gone, or one the host could not
///   extend within a lease (partitioned, paused), stops its VM; its result
///   is discarded (the store would fence it off anyway).
/// - Every tick also re-queues other hosts' expired jobs, and writes the
///   attempts' ends an outage kept.
extension FleetStore {
    /// A lease, less a tenth for the clocks' rates (the host's monotonic
    /// clock against the database's): a host stops its VM a little before
    /// the database would let another host rescue the job.
    var leaseNanos: UInt64 { UInt64(leaseSeconds * 0.9 * 1e9) }
}

extension Runner {
    var tickSeconds: Double { fleet.map { min(1, $0.leaseSeconds / 4) } ?? 1 }

    func joinFleet(_ fleet: any FleetStore) async throws(RunnerError) {
        await refreshImages(fleet)
        try await fleet.register(capacity)
        leasesHoldUntil = .max
        fleetTasks.append(fleet.notifications { [weak self] event in await self?.handle(event) })
        fleetTasks.append(Task { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                try? await Task.sleep(for: .seconds(self.tickSeconds))
                await self.tick()
            }
        })
        // The lease watchdog, apart from the heartbeat (which may wait on a
        // dead connection for its whole deadline): a VM whose lease this
        // host can no longer vouch for stops before any other host may
        // rescue its job (the lease ran from before the heartbeat was sent).
        fleetTasks.append(Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                await self?.checkLeases()
            }
        })
        logger.info("joined the fleet", metadata: ["host": "\(fleet.hostID)", "images": "\(verifiedImages.count)",
                                                   "lease_s": "\(fleet.leaseSeconds)"])
    }

    func leaveFleet() async {
        for t in fleetTasks { t.cancel() }
        fleetTasks = []
        // What the drain recorded while the database was away gets one more try.
        await flushPending()
    }

    var capacity: HostCapacity {
        HostCapacity(slots: config.maxVMs, memoryMiB: config.memoryBudgetMiB, images: verifiedImages, running: running.count,
                     address: config.advertiseAddress)
    }

    func handle(_ event: FleetEvent) {
        switch event {
        case .work: schedulePump()
        case let .final(id): notifyFinal(id)
        case let .cancel(id): stopForCancel(id)
        case .functions:
            if let fleet { Task { await self.refreshImages(fleet); self.schedulePump() } }
        case .reconnected:
            // Whatever was missed: look at the queue, and let every waiter re-read its job.
            schedulePump()
            for id in finalWaiters.keys { notifyFinal(id) }
        }
    }

    private func stopForCancel(_ id: String) {
        guard running[id] != nil else { return }
        running[id]!.cancelRequested = true
        if let vm = running[id]!.vm {
            vm.stop(.cancelled)
            logger.info("job cancel requested", metadata: ["job": "\(id)", "vmm": "\(vm.pid)"])
        }
    }

    func tick() async {
        guard let fleet, !draining else { return }
        ticks += 1
        let sentAt = Clock.monotonicNanos()
        let held = running.compactMap { id, r in r.attempt > 0 && !r.leaseLost ? JobLease(id: id, attempt: r.attempt) : nil }
        do {
            let (lost, cancel) = try await fleet.heartbeat(capacity, running: held)
            leasesHoldUntil = sentAt + fleet.leaseNanos
            for l in held where running[l.id]?.attempt == l.attempt { running[l.id]!.leaseHeldUntil = sentAt + fleet.leaseNanos }
            if heartbeatFailures > 0 { logger.info("the database is back", metadata: ["failed_heartbeats": "\(heartbeatFailures)"]) }
            heartbeatFailures = 0
            for l in lost where running[l.id]?.attempt == l.attempt && running[l.id]?.finishing == false {
                loseLease(l.id, why: "another host took it over")
            }
            for c in cancel { stopForCancel(c.id) }
            await flushPending()
            let (requeued, failed) = try await fleet.rescueExpired(now: Date().timeIntervalSince1970)
            if !requeued.isEmpty || !failed.isEmpty {
                metrics.rescued.increment(by: Int64(requeued.count + failed.count))
                logger.warning("rescued jobs whose host stopped heartbeating", metadata: ["requeued": "\(requeued)", "failed": "\(failed)"])
                for id in failed { notifyFinal(id) }
            }
            if ticks % 30 == 0 { await refreshImages(fleet) }
        } catch {
            heartbeatFailures += 1
            if heartbeatFailures == 1 || heartbeatFailures % 30 == 0 {
                logger.warning("heartbeat failed", metadata: ["error": "\(error)", "failures": "\(heartbeatFailures)"])
            }
        }
        checkLeases()
        // The polling fallback: a claim at least every tick.
        schedulePump()
    }

    /// Not extended within a lease: another host may rescue these jobs
    /// now, so this host must not go on running them.
    func checkLeases() {
        let now = Clock.monotonicNanos()
        for (id, r) in running where r.attempt > 0 && !r.leaseLost && !r.finishing && now > r.leaseHeldUntil {
            loseLease(id, why: "no heartbeat reached the database within a lease")
        }
    }

    private func loseLease(_ id: String, why: String) {
        guard running[id] != nil else { return }
        running[id]!.leaseLost = true
        logger.warning("lease lost: stopping the job's VM", metadata: ["job": "\(id)", "why": "\(why)"])
        running[id]!.vm?.stop(.infrastructure("its lease was lost"))
    }

    /// Records an attempt's end; on success, its metrics and waiters.
    func record(_ f: PendingFinish) async throws(RunnerError) -> JobRecord? {
        try await store.finishAttempt(f.id, attempt: f.attempt, state: f.state, exitStatus: f.exitStatus, error: f.error, outcome: f.outcome,
                                      now: f.now, retryAt: f.retryAt, timings: f.timings, outputBytes: f.outputBytes, logBytes: f.logBytes)
    }

    func flushPending() async {
        metrics.pendingFinishes.set(to: Double(pendingFinishes.count))
        while let f = pendingFinishes.first {
            let final: JobRecord?
            do { final = try await record(f) } catch .storeUnavailable { return } catch {
                logger.error("recording a kept job end failed", metadata: ["job": "\(f.id)", "error": "\(error)"])
                final = nil
            }
            pendingFinishes.removeFirst()
            metrics.pendingFinishes.set(to: Double(pendingFinishes.count))
            // The store took it only if the attempt was still this host's.
            guard let final, final.attempts == f.attempt, final.state == (f.retryAt == nil ? f.state : .queued) else {
                logger.warning("a kept job end was refused: the job moved on meanwhile (its lease ran out)",
                               metadata: ["job": "\(f.id)", "attempt": "\(f.attempt)", "now": "\(final?.state.rawValue ?? "gone")"])
                continue
            }
            logger.info("a kept job end was recorded", metadata: ["job": "\(f.id)", "state": "\(final.state.rawValue)"])
            if final.state.isFinal {
                metrics.finished(function: f.function, state: final.state)
                notifyFinal(f.id)
            }
        }
    }

    /// Which current functions' images this host holds, checked by
    /// SHA-256 (each file hashed again only when its size or mtime changes).
    /// An image reference is prepared here too (`swiftlet image prepare`:
    /// converted, or an `ext4:` file found; in the background, see
    /// `preparedDigest`), and its ext4 must hash to what the deploying host's did.
    func refreshImages(_ fleet: any FleetStore) async {
        guard let functions = try? await store.functions() else { return }
        var verified = Set<String>()
        for f in functions {
            if let reference = f.spec.imageReference {
                guard let sha = preparedDigest(reference, fleet) else { continue }
                if sha == f.imageSha256 {
                    verified.insert(sha)
                } else if preparedImages[reference]?.warnedAbout != f.imageSha256 {
                    preparedImages[reference]?.warnedAbout = f.imageSha256
                    logger.warning("the image prepared here is not the one deployed: this host does not run its jobs",
                                   metadata: ["function": "\(f.name)", "image": "\(reference)", "sha256": "\(sha)",
                                              "deployed_sha256": "\(f.imageSha256)"])
                }
                continue
            }
            var st = stat()
            guard stat(f.imagePath, &st) == 0 else { continue }
            let size = Int(st.st_size), mtime = Int(st.st_mtim.tv_sec)
            if let d = imageDigests[f.imagePath], d.size == size, d.mtime == mtime {
                if d.sha256 == f.imageSha256 { verified.insert(d.sha256) }
                continue
            }
            guard let sha = try? Snapshots.sha256(ofFile: f.imagePath) else { continue }
            imageDigests[f.imagePath] = ImageDigest(size: size, mtime: mtime, sha256: sha)
            if sha == f.imageSha256 { verified.insert(sha) }
        }
        verifiedImages = verified.sorted()
        // References no current function names any more are forgotten.
        let references = Set(functions.compactMap(\.spec.imageReference))
        preparedImages = preparedImages.filter { references.contains($0.key) || $0.value.preparing }
    }

    /// How often an image reference is prepared again: its source may have
    /// changed (a new ext4, another digest) or the cache been pruned.
    static let imageRecheckNanos: UInt64 = 30_000_000_000

    /// The SHA-256 of an image reference's ext4 on this host, as last
    /// prepared; nil until it has been. Never waits: a conversion (the first,
    /// one whose ext4 changed or vanished, or one due again) starts in the
    /// background, and refreshes the images when it ends. The heartbeat
    /// that calls this cannot wait a minute for a big image.
    func preparedDigest(_ reference: String, _ fleet: any FleetStore) -> String? {
        let now = Clock.monotonicNanos()
        guard let state = preparedImages[reference] else {
            startPreparing(reference, fleet)
            return nil
        }
        var digest: String?
        if let path = state.path, let d = imageDigests[path] {
            var st = stat()
            if stat(path, &st) == 0, Int(st.st_size) == d.size, Int(st.st_mtim.tv_sec) == d.mtime { digest = d.sha256 }
        }
        if !state.preparing && (now - state.checkedAt >= Self.imageRecheckNanos || (digest == nil && state.error == nil)) {
            startPreparing(reference, fleet)
        }
        return digest
    }

    /// Records an image the deploy just prepared (and hashed) here.
    func rememberPrepared(_ reference: String, path: String, sha256: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return }
        imageDigests[path] = ImageDigest(size: Int(st.st_size), mtime: Int(st.st_mtim.tv_sec), sha256: sha256)
        var state = preparedImages[reference] ?? PreparedImageState()
        (state.path, state.checkedAt, state.error) = (path, Clock.monotonicNanos(), nil)
        preparedImages[reference] = state
    }

    private func startPreparing(_ reference: String, _ fleet: any FleetStore) {
        var state = preparedImages[reference] ?? PreparedImageState()
        state.preparing = true
        preparedImages[reference] = state
        Task {
            let known = imageDigests
            var result: (path: String, digest: ImageDigest)?
            var failure: String?
            do throws(RunnerError) {
                let prepared = try await prepareImage(reference, log: false)
                let path = URL(fileURLWithPath: prepared).resolvingSymlinksInPath().path
                let digest = try await ChildProcess.offPool { () throws(RunnerError) -> ImageDigest in
                    var st = stat()
                    guard stat(path, &st) == 0 else { throw .badRequest("image \(path): \(String(cString: strerror(errno)))") }
                    let (size, mtime) = (Int(st.st_size), Int(st.st_mtim.tv_sec))
                    if let d = known[path], d.size == size, d.mtime == mtime { return d }
                    return ImageDigest(size: size, mtime: mtime, sha256: try Snapshots.sha256(ofFile: path))
                }
                result = (path, digest)
            } catch {
                failure = error.description
            }
            var state = preparedImages[reference] ?? PreparedImageState()
            state.preparing = false
            state.checkedAt = Clock.monotonicNanos()
            if let result {
                if state.path != result.path {
                    logger.info("image prepared", metadata: ["image": "\(reference)", "ext4": "\(result.path)", "sha256": "\(result.digest.sha256)"])
                }
                imageDigests[result.path] = result.digest
                (state.path, state.error) = (result.path, nil)
            } else if let failure {
                if state.error != failure {
                    logger.warning("preparing an image failed: this host does not run its jobs", metadata: ["image": "\(reference)", "error": "\(failure)"])
                }
                (state.path, state.error) = (nil, failure)
            }
            preparedImages[reference] = state
            await refreshImages(fleet)
            schedulePump()
        }
    }

    /// Claims queued jobs while this host has a free slot and the memory.
    func claimWork(_ fleet: any FleetStore) async {
        var versions: [VersionKey: FunctionRecord] = [:]
        while !draining, !verifiedImages.isEmpty, running.count < config.maxVMs, Clock.monotonicNanos() <= leasesHoldUntil {
            let runningMemory = running.values.reduce(0) { $0 + $1.memoryMiB }
            let claimed: (JobRecord, payload: [UInt8])?
            let sentAt = Clock.monotonicNanos()
            do {
                claimed = try await fleet.claim(now: Date().timeIntervalSince1970, memoryMiB: config.memoryBudgetMiB - runningMemory,
                                                images: verifiedImages, excluding: [])
            } catch .storeUnavailable {
                return  // the heartbeat says so, once
            } catch {
                logger.warning("claiming work failed", metadata: ["error": "\(error)"])
                return
            }
            metrics.claimed(seconds: Double(Clock.monotonicNanos() - sentAt) / 1e9)
            guard let (job, payload) = claimed else { break }
            metrics.claims.increment()
            let key = VersionKey(function: job.function, version: job.version)
            var version = versions[key]
            if version == nil { version = try? await store.version(job.function, job.version) }
            guard let version else {
                await failVersionGone(job)
                continue
            }
            versions[key] = version
            // The claim checked slots, memory and the fleet-wide concurrency;
            // warm VMs of other versions give way here.
            guard tryAdmit(function: job.function, memoryMiB: version.spec.memoryMiB, concurrency: .max, jobID: job.id, version: job.version) else {
                let now = Date().timeIntervalSince1970
                _ = try? await store.finishAttempt(job.id, attempt: job.attempts, state: .failed, exitStatus: nil, error: "handed back: no room on \(fleet.hostID)",
                                                   outcome: "handed back", now: now, retryAt: job.attempts < job.maxAttempts ? now : nil,
                                                   timings: JobTimings(), outputBytes: 0, logBytes: 0)
                break
            }
            let queueMs = job.timings.queueMs ?? 0
            running[job.id]?.leaseHeldUntil = sentAt + fleet.leaseNanos
            Task { _ = await self.execute(jobID: job.id, version: version, payload: payload, invocation: job.invocation, attempt: job.attempts,
                                          maxAttempts: job.maxAttempts, createdAt: job.createdAt, queueMs: queueMs) }
        }
        updateGauges()
    }

    /// A synchronous invoke with no slot here: queued in the fleet, run by
    /// whichever host claims it first, answered here when it ends. If no
    /// host starts it within `syncWaitSeconds`, it is withdrawn: 429.
    func invokeThroughQueue(_ f: FunctionRecord, job queuedJob: JobRecord, payload: [UInt8]) async throws(RunnerError) -> InvokeResult {
        let queued = try await store.insertJob(queuedJob, payload: payload).0
        schedulePump()
        var j = try await waitStarted(queued.id, seconds: config.syncWaitSeconds)
        if j.state == .queued {
            if try await store.deleteJob(j.id) {
                throw .tooManyRequests(reason: .concurrentInvocationLimitExceeded, retryAfterSeconds: 1)
            }
            j = try await job(j.id)
        }
        // Started somewhere: its timeout bounds it, and a lost host's lease runs out.
        let bound = f.spec.timeoutSeconds + 2 * (fleet?.leaseSeconds ?? 0) + 5
        j = try await waitFinal(j.id, seconds: bound)
        let output = j.state == .succeeded ? ((try? await store.readOutput(j.id, log: false)) ?? []) : []
        let log = (try? await store.readOutput(j.id, log: true)) ?? []
        return InvokeResult(job: j, output: output, logTail: Array(log.suffix(4096)), outcome: outcome(of: j), vmHandedOverAt: 0, vmExitedAt: 0)
    }

    /// Waits while the job is queued: until it starts, ends, or `seconds` pass.
    private func waitStarted(_ id: String, seconds: Double) async throws(RunnerError) -> JobRecord {
        let deadline = Clock.monotonicNanos() + UInt64(seconds * 1e9)
        var j = try await job(id)
        while j.state == .queued, Clock.monotonicNanos() < deadline {
            try? await Task.sleep(for: .milliseconds(100))
            j = try await job(id)
        }
        return j
    }

    /// What a final job record says its attempt ended with (for a job that
    /// ran on another host: no VMResult here).
    func outcome(of j: JobRecord) -> AttemptOutcome {
        switch j.state {
        case .succeeded: return .exited(0)
        case .timedOut: return .timedOut
        case .cancelled: return .cancelled
        case .failed:
            if let s = j.exitStatus { return s > 128 && s < 160 && j.error?.contains("signal") == true ? .signalled(Int32(s - 128)) : .exited(Int32(s)) }
            if j.error?.contains("output went over") == true { return .outputTooLarge(limit: config.outputLimit) }
            return .infrastructure(j.error ?? "failed")
        case .queued, .running: return .infrastructure("it did not end in time")
        }
    }

    /// The fleet's hosts; on one host without a fleet, this one.
    public func hosts() async throws(RunnerError) -> [HostRecord] {
        if let fleet { return try await fleet.hosts() }
        let now = Date().timeIntervalSince1970
        return [HostRecord(id: "local", capacity: capacity, startedAt: now, heartbeatAt: now, silentSeconds: 0, alive: true)]
    }
}
