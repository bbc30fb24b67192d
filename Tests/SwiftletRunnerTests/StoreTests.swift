import Foundation
import Testing
@testable import SwiftletRunner

/// A fresh state directory per test, removed afterwards.
final class TempState {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "swiftlet-test-runner-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

func queuedJob(_ function: String, version: Int = 1, key: String? = nil, invocation: Invocation = .async, maxAttempts: Int = 3, now: Double = 1000) -> JobRecord {
    JobRecord(id: JobID.make(), function: function, version: version, state: .queued, invocation: invocation, attempts: 0,
              maxAttempts: maxAttempts, exitStatus: nil, error: nil, idempotencyKey: key, createdAt: now, startedAt: nil,
              finishedAt: nil, notBefore: now, outputBytes: 0, logBytes: 0, timings: JobTimings(), seq: 0)
}

@Suite struct FunctionSpecTests {
    func decode(_ json: String) throws(RunnerError) -> FunctionSpec { try FunctionSpec.decode(Array(json.utf8)) }

    @Test func defaultsForEverythingButCommand() throws {
        let s = try decode(#"{"command": ["sh", "-c", "cat"]}"#)
        #expect(s == FunctionSpec(command: ["sh", "-c", "cat"]))
        #expect(s.memoryMiB == 128 && s.vcpus == 1 && s.timeoutSeconds == 60 && s.image == "default")
    }

    @Test func everyField() throws {
        let s = try decode(#"{"command":["x"],"image":"/i.ext4","env":{"A_1":"b"},"workdir":"/tmp","memoryMiB":256,"vcpus":2,"timeoutSeconds":1.5,"concurrency":3,"warm":1,"retries":0}"#)
        #expect(s == FunctionSpec(command: ["x"], image: "/i.ext4", env: ["A_1": "b"], workdir: "/tmp", memoryMiB: 256, vcpus: 2,
                                  timeoutSeconds: 1.5, concurrency: 3, warm: 1, retries: 0))
    }

    @Test(arguments: [
        ("not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        (#"{"command":["x"],"memory":5}"#, "unknown field 'memory'"),
        (#"{}"#, "'command' is required"),
        (#"{"command":[]}"#, "'command' must have 1 to 256"),
        (#"{"command":"ls"}"#, "'command' has the wrong type"),
        (#"{"command":["x"],"memoryMiB":0}"#, "'memoryMiB' must be 32 to 16384"),
        (#"{"command":["x"],"memoryMiB":-5}"#, "'memoryMiB' must be 32 to 16384"),
        (#"{"command":["x"],"memoryMiB":1.5}"#, "'memoryMiB'"),
        (#"{"command":["x"],"memoryMiB":true}"#, "'memoryMiB' has the wrong type"),
        (#"{"command":["x"],"vcpus":0}"#, "'vcpus' must be 1 to 32"),
        (#"{"command":["x"],"timeoutSeconds":0}"#, "'timeoutSeconds'"),
        (#"{"command":["x"],"image":"relative.ext4"}"#, "'image' must be"),
        (#"{"command":["x"],"env":{"1A":"x"}}"#, "not a valid variable name"),
        (#"{"command":["x"],"workdir":"tmp"}"#, "'workdir' must be an absolute path"),
        (#"{"command":["x"],"warm":65}"#, "'warm' must be 0 to 64"),
        (#"{"command":["x"],"retries":11}"#, "'retries' must be 0 to 10"),
    ])
    func refusesWithTheFieldNamed(json: String, message: String) {
        #expect {
            try decode(json)
        } throws: { error in
            guard case let .badRequest(m) = error as? RunnerError else { return false }
            return m.contains(message)
        }
    }

    @Test func names() {
        #expect(FunctionSpec.isValidName("my-fn_1"))
        #expect(!FunctionSpec.isValidName(""))
        #expect(!FunctionSpec.isValidName("a/b"))
        #expect(!FunctionSpec.isValidName("a..b"))
        #expect(!FunctionSpec.isValidName(String(repeating: "a", count: 65)))
    }
}

@Suite struct StoreTests {
    @Test func deployMakesAVersionOnlyWhenTheSpecChanges() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let spec = FunctionSpec(command: ["cat"])
        let (a, created) = try store.deploy(name: "f", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        #expect(created && a.version == 1)
        let (b, createdAgain) = try store.deploy(name: "f", spec: spec, imagePath: "/i", imageSha256: "aa", now: 2)
        #expect(!createdAgain && b.version == 1)
        var changed = spec
        changed.memoryMiB = 256
        let (c, _) = try store.deploy(name: "f", spec: changed, imagePath: "/i", imageSha256: "aa", now: 3)
        #expect(c.version == 2)
        let (d, _) = try store.deploy(name: "f", spec: changed, imagePath: "/i", imageSha256: "bb", now: 4)
        #expect(d.version == 3, "a new image content is a new version")
        #expect(try store.version("f", 1)?.spec == spec)
        #expect(try store.versionsInUse() == [VersionKey(function: "f", version: 3)])
    }

    @Test func idempotencyKeyReturnsTheFirstJob() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let (first, replayed1) = try store.insertJob(queuedJob("f", key: "k"), payload: [1])
        let (second, replayed2) = try store.insertJob(queuedJob("f", key: "k"), payload: [2])
        #expect(!replayed1 && replayed2 && first.id == second.id)
        #expect(try store.payload(first.id) == [1])
        // Keys are per function.
        let (other, replayed3) = try store.insertJob(queuedJob("g", key: "k"), payload: nil)
        #expect(!replayed3 && other.id != first.id)
        #expect(try store.jobs(function: nil, state: nil, limit: 10, before: nil).count == 2)
    }

    @Test func recoveryRequeuesWhileAttemptsRemainElseFails() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let retryable = try store.insertJob(queuedJob("f", maxAttempts: 2), payload: nil).0
        let lastTry = try store.insertJob(queuedJob("f", maxAttempts: 1), payload: nil).0
        let sync = try store.insertJob(queuedJob("f", invocation: .sync, maxAttempts: 1), payload: nil).0
        let waiting = try store.insertJob(queuedJob("f"), payload: nil).0
        for j in [retryable, lastTry] { #expect(try store.markRunning(j.id, now: 2000, queueMs: 1)) }
        let (requeued, failed) = try store.recover(now: 3000)
        #expect(requeued == 1 && failed == 2)
        #expect(try store.job(retryable.id)?.state == .queued)
        #expect(try store.job(lastTry.id)?.state == .failed)
        #expect(try store.job(lastTry.id)?.error == "runner restarted")
        #expect(try store.job(sync.id)?.state == .failed)
        #expect(try store.job(waiting.id)?.state == .queued)
    }

    @Test func aSyncInvokeAdmittedAtOnceIsRecordedRunningWithItsAttempt() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let j = try store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1001, queueMs: 0.5)
        let stored = try #require(try store.job(j.id))
        #expect(stored.state == .running && stored.attempts == 1 && stored.startedAt == 1001 && stored.timings.queueMs == 0.5)
        #expect(stored.seq == j.seq)
        let done = try store.finishAttempt(j.id, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 1002,
                                           retryAt: nil, timings: JobTimings(queueMs: 0.5), outputBytes: 3, logBytes: 0)
        #expect(done?.state == .succeeded && done?.outputBytes == 3)
        // After a restart it is a sync invoke that was running: failed, never rerun.
        let k = try store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1003, queueMs: 0)
        _ = try store.recover(now: 1004)
        #expect(try store.job(k.id)?.state == .failed)
    }

    @Test func finishingAJobAlreadyFinalLeavesItAndReturnsIt() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let j = try store.insertJob(queuedJob("f"), payload: nil).0
        _ = try #require(try store.cancelQueued(j.id, now: 5))
        let after = try store.finishAttempt(j.id, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 6,
                                            retryAt: nil, timings: JobTimings(), outputBytes: 1, logBytes: 0)
        #expect(after?.state == .cancelled && after?.outputBytes == 0)
        #expect(try store.job(j.id)?.state == .cancelled)
    }

    @Test func theFunctionCacheFollowsDeployRemoveAndRedeploy() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        var spec = FunctionSpec(command: ["cat"])
        _ = try store.deploy(name: "b", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        _ = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        spec.memoryMiB = 256
        _ = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 2)
        #expect(try store.function("a")?.version == 2 && store.function("a")?.spec == spec)
        #expect(try store.functions().map(\.name) == ["a", "b"])
        #expect(try store.removeFunction("a", now: 3))
        #expect(try store.function("a") == nil && store.functions().map(\.name) == ["b"])
        #expect(try !store.removeFunction("a", now: 3))
        let (again, created) = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 4)
        #expect(created && again.version == 3, "versions go on after a remove")
        // What a fresh open reads from SQLite is what the cache says.
        let reopened = try Store(directory: t.path)
        for name in ["a", "b", "c"] { #expect(try reopened.function(name) == store.function(name)) }
        #expect(try reopened.functions() == store.functions())
    }

    /// SQLite's own checkpoint is off; the checkpointer's thread keeps the
    /// WAL from growing: after each batch of writes it is checkpointed, and
    /// the next batch starts the WAL over, so its file stays the size of
    /// one batch (unchecked, it would grow by one batch each round).
    @Test func theWALIsCheckpointedBesideTheWrites() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        func batch() throws {
            for _ in 0..<WALCheckpointer.writesPerCheckpoint {
                let j = try store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1, queueMs: 0)
                _ = try store.finishAttempt(j.id, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 2,
                                            retryAt: nil, timings: JobTimings(), outputBytes: 0, logBytes: 0)
            }
        }
        func walBytes() throws -> Int {
            (try FileManager.default.attributesOfItem(atPath: t.path + "/runner.sqlite3-wal")[.size] as? Int) ?? 0
        }
        try batch()
        let one = try walBytes()
        #expect(one > 0)
        for _ in 0..<3 {
            Thread.sleep(forTimeInterval: 2.5)
            try batch()
        }
        let last = try walBytes()
        #expect(last < one * 3 / 2, "the WAL grew from \(one) to \(last) bytes: it was not checkpointed")
    }

    @Test func cancelOnlyWhileQueued() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let j = try store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try store.cancelQueued(j.id, now: 2000)?.state == .cancelled)
        #expect(try store.cancelQueued(j.id, now: 2001) == nil)
        #expect(try store.markRunning(j.id, now: 2002, queueMs: 0) == false, "a cancelled job never starts")
    }

    @Test func dueHeadsAreOnePerFunctionOldestFirstAndHonourBackoff() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let a1 = try store.insertJob(queuedJob("a", now: 10), payload: nil).0
        _ = try store.insertJob(queuedJob("a", now: 11), payload: nil)
        let b1 = try store.insertJob(queuedJob("b", now: 12), payload: nil).0
        #expect(Set(try store.dueHeads(now: 100).map(\.id)) == [a1.id, b1.id])
        #expect(try store.markRunning(a1.id, now: 100, queueMs: 0))
        _ = try store.finishAttempt(a1.id, state: .failed, exitStatus: 1, error: "x", outcome: "exited(1)", now: 101, retryAt: 500,
                                    timings: JobTimings(), outputBytes: 0, logBytes: 0)
        #expect(try store.job(a1.id)?.state == .queued)
        #expect(try store.dueHead(function: "a", now: 200)?.id != a1.id, "in backoff until 500")
        #expect(try store.nextDue() == 11)
    }

    @Test func pruneDeletesFinishedJobsAndTheirFiles() throws {
        let t = TempState()
        let store = try Store(directory: t.path)
        let j = try store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try store.markRunning(j.id, now: 100, queueMs: 0))
        _ = try store.finishAttempt(j.id, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 200, retryAt: nil,
                                    timings: JobTimings(), outputBytes: 1, logBytes: 0)
        #expect(FileManager.default.createFile(atPath: store.outputPath(j.id), contents: Data([1])))
        let kept = try store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try store.prune(finishedBefore: 300) == 1)
        #expect(try store.job(j.id) == nil)
        #expect(!FileManager.default.fileExists(atPath: store.outputPath(j.id)))
        #expect(try store.job(kept.id) != nil)
    }

    @Test func survivesReopening() throws {
        let t = TempState()
        let id: String
        do {
            let store = try Store(directory: t.path)
            _ = try store.deploy(name: "f", spec: FunctionSpec(command: ["x"]), imagePath: "/i", imageSha256: "a", now: 1)
            id = try store.insertJob(queuedJob("f"), payload: [7]).0.id
        }
        let again = try Store(directory: t.path)
        #expect(try again.function("f")?.version == 1)
        #expect(try again.payload(id) == [7])
    }
}

@Suite struct SchedulingRulesTests {
    @Test func backoffDoublesWithJitterAndIsCapped() {
        for attempt in 1...12 {
            let raw = min(300, 2 * pow(2, Double(attempt - 1)))
            for _ in 0..<50 {
                let d = Runner.backoff(attempt: attempt, base: 2)
                #expect(d >= raw * 0.5 && d < raw)
            }
        }
    }

    @Test func outcomesMapToStates() {
        #expect(Runner.classify(.exited(0)).0 == .succeeded)
        #expect(Runner.classify(.exited(3)).0 == .failed && Runner.classify(.exited(3)).1 == 3)
        #expect(Runner.classify(.signalled(9)).1 == 137)
        #expect(Runner.classify(.timedOut).0 == .timedOut)
        #expect(Runner.classify(.cancelled).0 == .cancelled)
        #expect(Runner.classify(.outputTooLarge(limit: 5)).0 == .failed)
    }

    @Test func reportLineDecidesTheOutcome() {
        let report = VMProcess.parseReport(Array("swiftlet-timings: start=snapshot boot-ms=12.5 job-host-ms=3.0 outcome=exit:124\n".utf8))
        #expect(report["boot-ms"] == "12.5")
        // A handler's own 124 is not a timeout: the report says which it was.
        #expect(VMProcess.outcome(status: 124 << 8, fields: report, log: []) == .exited(124))
        #expect(VMProcess.outcome(status: 124 << 8, fields: ["outcome": "timeout"], log: []) == .timedOut)
        #expect(VMProcess.outcome(status: 137 << 8, fields: ["outcome": "signal:9"], log: []) == .signalled(9))
        // No report: the VMM itself failed, with its last error line.
        #expect(VMProcess.outcome(status: 125 << 8, fields: [:], log: Array("swiftlet: error: no KVM\n".utf8)) == .infrastructure("no KVM"))
        #expect(VMProcess.outcome(status: 9, fields: [:], log: []) == .infrastructure("the VMM was killed by signal 9"))
    }
}
