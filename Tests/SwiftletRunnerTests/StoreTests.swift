import Foundation
import Logging
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
        (#"{"command":["x"],"image":"docker://busybox"}"#, "'image' must be"),
        (#"{"command":["x"],"image":"tar:rootfs.tar"}"#, "'image' must be"),
        (#"{"command":["x"],"image":"oci:"}"#, "'image' must be"),
        (#"{"command":["x"],"image":"/a\u0000b"}"#, "'image' must be"),
        (#"{"command":["x"],"user":"root"}"#, "'user' needs an image other than \"default\""),
        (#"{"command":["x"],"image":"tar:/i.tar","user":""}"#, "'user' must be"),
        (#"{"command":["x"],"image":"tar:/i.tar","user":"a:b:c"}"#, "'user' must be"),
        (#"{"command":["x"],"image":"tar:/i.tar","user":":g"}"#, "'user' must be"),
        (#"{"command":["x"],"image":"tar:/i.tar","user":7}"#, "'user' has the wrong type"),
        (#"{"command":["x"],"image":"tar:/i.tar","user":null}"#, "'user' must not be null"),
        (#"{"command":["x"],"imageConverted":true}"#, "unknown field 'imageConverted'"),
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

    @Test func imageReferencesAndUser() throws {
        for image in ["oci:/srv/layout", "oci:/srv/layout:v1", "docker-archive:/srv/a.tar", "tar:/srv/r.tar.gz", "dir:/srv/root"] {
            let s = try decode(#"{"command":["x"],"image":"\#(image)","user":"worker:staff"}"#)
            #expect(s.image == image && s.user == "worker:staff" && s.imageKind == .reference && s.imageReference == image)
        }
        let ext4 = try decode(#"{"command":["x"],"image":"ext4:/srv/r.ext4","user":"root"}"#)
        #expect(ext4.imageKind == .ext4(path: "/srv/r.ext4") && ext4.imageReference == "ext4:/srv/r.ext4")
        // A plain path is converted only when the deploy found it is not ext4 (it may name a user until then).
        var plain = try decode(#"{"command":["x"],"image":"/srv/r.tar","user":"1000"}"#)
        #expect(plain.imageKind == .path("/srv/r.tar") && plain.imageReference == nil)
        plain.imageConverted = true
        #expect(plain.imageReference == "/srv/r.tar")
        #expect(try decode(#"{"command":["x"]}"#).imageReference == nil)
    }

    /// Specs without the new fields are stored as before (no new version after an upgrade).
    @Test func storedTextOfASpecWithoutTheImageFields() throws {
        let text = try StoredSpec.encode(FunctionSpec(command: ["cat"], workdir: "/w"))
        #expect(!text.contains("user") && !text.contains("imageConverted"))
        var converted = FunctionSpec(command: ["cat"], image: "/srv/r.tar", user: "worker")
        converted.imageConverted = true
        #expect(try StoredSpec.decode(try StoredSpec.encode(converted)) == converted)
    }

    @Test func names() {
        #expect(FunctionSpec.isValidName("my-fn_1"))
        #expect(!FunctionSpec.isValidName(""))
        #expect(!FunctionSpec.isValidName("a/b"))
        #expect(!FunctionSpec.isValidName("a..b"))
        #expect(!FunctionSpec.isValidName(String(repeating: "a", count: 65)))
    }
}

/// The engines the store tests run on: every case in `StoreTests` runs
/// against both, so SQLite and PostgreSQL cannot drift apart.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// One store on a fresh state (directory, and for PostgreSQL a fresh
/// database); more stores on the same state are other hosts of a fleet.
final class StoreFixture {
    let kind: StoreKind
    let state = TempState()
    let url: String?
    private var opened: [any JobStore] = []

    init(_ kind: StoreKind) async throws {
        self.kind = kind
        switch kind {
        case .sqlite: url = nil
        case .postgres: url = try await PostgresCluster.shared().createDatabase()
        }
    }

    func open(host: String = "host-a", leaseSeconds: Double = 10) async throws -> any JobStore {
        let store: any JobStore
        switch kind {
        case .sqlite: store = try SQLiteStore(directory: state.path)
        case .postgres:
            store = try await PostgresStore.open(try PostgresURL(url!), stateDirectory: state.path + "/" + host, hostID: host,
                                                 leaseSeconds: leaseSeconds, logger: Logger(label: "test"))
        }
        opened.append(store)
        return store
    }

    deinit { for case let p as PostgresStore in opened { p.close() } }
}

@Suite struct StoreTests {
    @Test(arguments: StoreKind.allCases)
    func deployMakesAVersionOnlyWhenTheSpecChanges(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let spec = FunctionSpec(command: ["cat"])
        let (a, created) = try await store.deploy(name: "f", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        #expect(created && a.version == 1)
        let (b, createdAgain) = try await store.deploy(name: "f", spec: spec, imagePath: "/i", imageSha256: "aa", now: 2)
        #expect(!createdAgain && b.version == 1)
        var changed = spec
        changed.memoryMiB = 256
        let (c, _) = try await store.deploy(name: "f", spec: changed, imagePath: "/i", imageSha256: "aa", now: 3)
        #expect(c.version == 2)
        let (d, _) = try await store.deploy(name: "f", spec: changed, imagePath: "/i", imageSha256: "bb", now: 4)
        #expect(d.version == 3, "a new image content is a new version")
        #expect(try await store.version("f", 1)?.spec == spec)
        #expect(try await store.versionsInUse() == [VersionKey(function: "f", version: 3)])
    }

    @Test(arguments: StoreKind.allCases)
    func idempotencyKeyReturnsTheFirstJob(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let (first, replayed1) = try await store.insertJob(queuedJob("f", key: "k"), payload: [1])
        let (second, replayed2) = try await store.insertJob(queuedJob("f", key: "k"), payload: [2])
        #expect(!replayed1 && replayed2 && first.id == second.id)
        #expect(try await store.payload(first.id) == [1])
        #expect(try await store.replayedJob(function: "f", key: "k")?.id == first.id)
        // Keys are per function.
        let (other, replayed3) = try await store.insertJob(queuedJob("g", key: "k"), payload: nil)
        #expect(!replayed3 && other.id != first.id)
        #expect(try await store.jobs(function: nil, state: nil, limit: 10, before: nil).count == 2)
    }

    @Test(arguments: StoreKind.allCases)
    func listingFiltersAndPagesNewestFirst(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        var ids: [String] = []
        for i in 0..<5 { ids.append(try await store.insertJob(queuedJob(i % 2 == 0 ? "a" : "b"), payload: nil).0.id) }
        _ = try await store.cancelQueued(ids[4], now: 2000)
        let all = try await store.jobs(function: nil, state: nil, limit: 10, before: nil)
        #expect(all.map(\.id) == ids.reversed())
        let page = try await store.jobs(function: nil, state: nil, limit: 2, before: all[1].seq)
        #expect(page.map(\.id) == [ids[2], ids[1]])
        #expect(try await store.jobs(function: "a", state: nil, limit: 10, before: nil).map(\.id) == [ids[4], ids[2], ids[0]])
        #expect(try await store.jobs(function: "a", state: .queued, limit: 10, before: nil).map(\.id) == [ids[2], ids[0]])
        #expect(try await store.countQueued() == 4)
        let counts = try await store.jobCounts()
        #expect(counts.first { $0.function == "a" && $0.state == .cancelled }?.count == 1)
        #expect(counts.first { $0.function == "b" && $0.state == .queued }?.count == 2)
    }

    @Test(arguments: StoreKind.allCases)
    func recoveryRequeuesWhileAttemptsRemainElseFails(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let retryable = try await store.insertJob(queuedJob("f", maxAttempts: 2), payload: nil).0
        let lastTry = try await store.insertJob(queuedJob("f", maxAttempts: 1), payload: nil).0
        let sync = try await store.insertJob(queuedJob("f", invocation: .sync, maxAttempts: 1), payload: nil).0
        let waiting = try await store.insertJob(queuedJob("f"), payload: nil).0
        for j in [retryable, lastTry] { #expect(try await store.markRunning(j.id, now: 2000, queueMs: 1)) }
        let (requeued, failed) = try await store.recover(now: 3000)
        #expect(requeued == 1 && failed == 2)
        #expect(try await store.job(retryable.id)?.state == .queued)
        #expect(try await store.job(lastTry.id)?.state == .failed)
        #expect(try await store.job(lastTry.id)?.error == "runner restarted")
        #expect(try await store.job(sync.id)?.state == .failed)
        #expect(try await store.job(waiting.id)?.state == .queued)
    }

    @Test(arguments: StoreKind.allCases)
    func aSyncInvokeAdmittedAtOnceIsRecordedRunningWithItsAttempt(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let j = try await store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1001, queueMs: 0.5)
        let stored = try #require(try await store.job(j.id))
        #expect(stored.state == .running && stored.attempts == 1 && stored.startedAt == 1001 && stored.timings.queueMs == 0.5)
        #expect(stored.seq == j.seq)
        let done = try await store.finishAttempt(j.id, attempt: 1, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 1002,
                                                 retryAt: nil, timings: JobTimings(queueMs: 0.5), outputBytes: 3, logBytes: 0)
        #expect(done?.state == .succeeded && done?.outputBytes == 3)
        // After a restart it is a sync invoke that was running: failed, never rerun.
        let k = try await store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1003, queueMs: 0)
        _ = try await store.recover(now: 1004)
        #expect(try await store.job(k.id)?.state == .failed)
    }

    @Test(arguments: StoreKind.allCases)
    func finishingAJobAlreadyFinalLeavesItAndReturnsIt(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let j = try await store.insertJob(queuedJob("f"), payload: nil).0
        _ = try #require(try await store.cancelQueued(j.id, now: 5))
        let after = try await store.finishAttempt(j.id, attempt: 0, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 6,
                                                  retryAt: nil, timings: JobTimings(), outputBytes: 1, logBytes: 0)
        #expect(after?.state == .cancelled && after?.outputBytes == 0)
        #expect(try await store.job(j.id)?.state == .cancelled)
    }

    /// The fence: a finish names its attempt; an earlier attempt's late
    /// result (the job was retried meanwhile) changes nothing.
    @Test(arguments: StoreKind.allCases)
    func aStaleAttemptsFinishChangesNothing(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let j = try await store.insertJob(queuedJob("f", maxAttempts: 3), payload: nil).0
        #expect(try await store.markRunning(j.id, now: 10, queueMs: 0))
        _ = try await store.finishAttempt(j.id, attempt: 1, state: .failed, exitStatus: 1, error: "x", outcome: "exited(1)", now: 11, retryAt: 11,
                                          timings: JobTimings(), outputBytes: 0, logBytes: 0)
        #expect(try await store.markRunning(j.id, now: 12, queueMs: 0))
        let stale = try await store.finishAttempt(j.id, attempt: 1, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 13,
                                                  retryAt: nil, timings: JobTimings(), outputBytes: 9, logBytes: 0)
        #expect(stale?.state == .running && stale?.attempts == 2 && stale?.outputBytes == 0)
        let current = try await store.finishAttempt(j.id, attempt: 2, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 14,
                                                    retryAt: nil, timings: JobTimings(), outputBytes: 2, logBytes: 0)
        #expect(current?.state == .succeeded && current?.outputBytes == 2)
    }

    @Test(arguments: StoreKind.allCases)
    func removingAFunctionCancelsItsQueuedJobs(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        var spec = FunctionSpec(command: ["cat"])
        _ = try await store.deploy(name: "b", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        _ = try await store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        spec.memoryMiB = 256
        _ = try await store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 2)
        #expect(try await store.function("a")?.version == 2)
        #expect(try await store.function("a")?.spec == spec)
        #expect(try await store.functions().map(\.name) == ["a", "b"])
        let queued = try await store.insertJob(queuedJob("a", version: 2), payload: nil).0
        #expect(try await store.removeFunction("a", now: 3))
        #expect(try await store.function("a") == nil)
        #expect(try await store.functions().map(\.name) == ["b"])
        #expect(try await !store.removeFunction("a", now: 3))
        #expect(try await store.job(queued.id)?.state == .cancelled)
        let (again, created) = try await store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 4)
        #expect(created && again.version == 3, "versions go on after a remove")
    }

    @Test(arguments: StoreKind.allCases)
    func cancelOnlyWhileQueued(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let j = try await store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try await store.cancelQueued(j.id, now: 2000)?.state == .cancelled)
        #expect(try await store.cancelQueued(j.id, now: 2001) == nil)
        #expect(try await store.markRunning(j.id, now: 2002, queueMs: 0) == false, "a cancelled job never starts")
        let t = try await store.insertJob(queuedJob("f", invocation: .sync), payload: nil).0
        try await store.deleteJob(t.id)
        #expect(try await store.job(t.id) == nil)
    }

    @Test(arguments: StoreKind.allCases)
    func dueHeadsAreOnePerFunctionOldestFirstAndHonourBackoff(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let a1 = try await store.insertJob(queuedJob("a", now: 10), payload: nil).0
        _ = try await store.insertJob(queuedJob("a", now: 11), payload: nil)
        let b1 = try await store.insertJob(queuedJob("b", now: 12), payload: nil).0
        #expect(Set(try await store.dueHeads(now: 100).map(\.id)) == [a1.id, b1.id])
        #expect(try await store.markRunning(a1.id, now: 100, queueMs: 0))
        _ = try await store.finishAttempt(a1.id, attempt: 1, state: .failed, exitStatus: 1, error: "x", outcome: "exited(1)", now: 101, retryAt: 500,
                                          timings: JobTimings(), outputBytes: 0, logBytes: 0)
        #expect(try await store.job(a1.id)?.state == .queued)
        #expect(try await store.dueHead(function: "a", now: 200)?.id != a1.id, "in backoff until 500")
        #expect(try await store.nextDue() == 11)
    }

    @Test(arguments: StoreKind.allCases)
    func outputIsKeptWithTheJobAndPrunedWithIt(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let store = try await fx.open()
        let j = try await store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try await store.markRunning(j.id, now: 100, queueMs: 0))
        // What the VMM's collector writes while the job runs.
        #expect(FileManager.default.createFile(atPath: store.outputPath(j.id), contents: Data([1, 0, 255])))
        #expect(FileManager.default.createFile(atPath: store.logPath(j.id), contents: Data("warn\n".utf8)))
        #expect(try await store.readOutput(j.id, log: false) == [1, 0, 255], "while it runs: the file so far")
        _ = try await store.finishAttempt(j.id, attempt: 1, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 200, retryAt: nil,
                                          timings: JobTimings(), outputBytes: 3, logBytes: 5)
        #expect(try await store.readOutput(j.id, log: false) == [1, 0, 255])
        #expect(try await store.readOutput(j.id, log: true) == Array("warn\n".utf8))
        let kept = try await store.insertJob(queuedJob("f"), payload: nil).0
        #expect(try await store.prune(finishedBefore: 300) == 1)
        #expect(try await store.job(j.id) == nil)
        await #expect(throws: RunnerError.jobNotFound(j.id)) { try await store.readOutput(j.id, log: false) }
        #expect(!FileManager.default.fileExists(atPath: store.outputPath(j.id)))
        #expect(try await store.job(kept.id) != nil)
    }

    @Test(arguments: StoreKind.allCases)
    func survivesReopening(kind: StoreKind) async throws {
        let fx = try await StoreFixture(kind)
        let id: String
        do {
            let store = try await fx.open()
            _ = try await store.deploy(name: "f", spec: FunctionSpec(command: ["x"]), imagePath: "/i", imageSha256: "a", now: 1)
            id = try await store.insertJob(queuedJob("f"), payload: [7]).0.id
        }
        let again = try await fx.open()
        #expect(try await again.function("f")?.version == 1)
        #expect(try await again.payload(id) == [7])
    }
}

/// What only SQLite has: the function cache and the WAL checkpointer.
@Suite struct SQLiteStoreTests {
    @Test func theFunctionCacheFollowsDeployRemoveAndRedeploy() throws {
        let t = TempState()
        let store = try SQLiteStore(directory: t.path)
        var spec = FunctionSpec(command: ["cat"])
        _ = try store.deploy(name: "b", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        _ = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 1)
        spec.memoryMiB = 256
        _ = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 2)
        #expect(try store.function("a")?.version == 2 && store.function("a")?.spec == spec)
        #expect(try store.removeFunction("a", now: 3))
        #expect(try store.function("a") == nil && store.functions().map(\.name) == ["b"])
        _ = try store.deploy(name: "a", spec: spec, imagePath: "/i", imageSha256: "aa", now: 4)
        // What a fresh open reads from SQLite is what the cache says.
        let reopened = try SQLiteStore(directory: t.path)
        for name in ["a", "b", "c"] { #expect(try reopened.function(name) == store.function(name)) }
        #expect(try reopened.functions() == store.functions())
    }

    /// SQLite's own checkpoint is off; the checkpointer's thread keeps the
    /// WAL from growing: after each batch of writes it is checkpointed, and
    /// the next batch starts the WAL over, so its file stays the size of
    /// one batch (unchecked, it would grow by one batch each round).
    @Test func theWALIsCheckpointedBesideTheWrites() throws {
        let t = TempState()
        let store = try SQLiteStore(directory: t.path)
        func batch() throws {
            for _ in 0..<WALCheckpointer.writesPerCheckpoint {
                let j = try store.insertRunningJob(queuedJob("f", invocation: .sync, maxAttempts: 1), now: 1, queueMs: 0)
                _ = try store.finishAttempt(j.id, attempt: 1, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 2,
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
