import Foundation
import Logging
import Synchronization
import Testing
@testable import SwiftletRunner

/// The fleet's primitives on a real PostgreSQL: several `PostgresStore`s
/// on one database are several hosts.
@Suite struct FleetStoreTests {
    static let image = String(repeating: "ab", count: 32)

    func fleet(hosts: [String], leaseSeconds: Double = 10) async throws -> (StoreFixture, [PostgresStore]) {
        let fx = try await StoreFixture(.postgres)
        var stores: [PostgresStore] = []
        for h in hosts { stores.append(try #require(try await fx.open(host: h, leaseSeconds: leaseSeconds) as? PostgresStore)) }
        return (fx, stores)
    }

    func deploy(_ store: PostgresStore, _ name: String, memoryMiB: Int = 128, concurrency: Int = 100, image: String = image) async throws {
        var spec = FunctionSpec(command: ["cat"])
        spec.memoryMiB = memoryMiB
        spec.concurrency = concurrency
        _ = try await store.deploy(name: name, spec: spec, imagePath: "/i", imageSha256: image, now: 1)
    }

    @Test func simultaneousFirstStartsMigrateOnce() async throws {
        let url = try await PostgresCluster.shared().createDatabase()
        let state = TempState()
        let dir = state.path
        let stores = try await withThrowingTaskGroup(of: PostgresStore.self) { group in
            for i in 0..<3 {
                group.addTask {
                    try await PostgresStore.open(try PostgresURL(url), stateDirectory: dir + "/\(i)", hostID: "h\(i)", logger: Logger(label: "test"))
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        defer { stores.forEach { $0.close() } }
        #expect(try await stores[0].schemaVersion() == PostgresStore.migrations.last!.version)
        let rows = try await PostgresCluster.shared().psql(url, "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations")
        #expect(rows == "\(PostgresStore.migrations.count)|\(PostgresStore.migrations.count)")
    }

    /// Four claimers on two hosts drain 40 jobs: each claimed exactly once.
    @Test func concurrentClaimsTakeEachJobOnce() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a", "b"])
        defer { withExtendedLifetime(fx) {} }
        try await deploy(hosts[0], "f")
        var ids = Set<String>()
        for _ in 0..<40 { ids.insert(try await hosts[0].insertJob(queuedJob("f"), payload: [1, 2]).0.id) }
        let claimed = try await withThrowingTaskGroup(of: [(String, String, Int, [UInt8])].self) { group in
            for i in 0..<4 {
                let store = hosts[i % 2]
                group.addTask {
                    var mine: [(String, String, Int, [UInt8])] = []
                    while let (job, payload) = try await store.claim(now: 2000, memoryMiB: 1024, images: [Self.image], excluding: []) {
                        mine.append((job.id, store.hostID, job.attempts, payload))
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(claimed.count == 40)
        #expect(Set(claimed.map(\.0)) == ids)
        #expect(claimed.allSatisfy { $0.2 == 1 && $0.3 == [1, 2] })
        #expect(Set(claimed.map(\.1)) == ["a", "b"], "both hosts took some")
        let running = try await hosts[0].jobs(function: "f", state: .running, limit: 100, before: nil)
        #expect(running.count == 40)
    }

    @Test func aClaimTakesOnlyWhatFitsTheHost() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a"])
        defer { withExtendedLifetime(fx) {} }
        let h = hosts[0]
        try await deploy(h, "big", memoryMiB: 2048)
        try await deploy(h, "other-image", image: String(repeating: "cd", count: 32))
        try await deploy(h, "limited", concurrency: 1)
        try await deploy(h, "blocked")
        let big = try await h.insertJob(queuedJob("big"), payload: nil).0
        _ = try await h.insertJob(queuedJob("other-image"), payload: nil)
        let l1 = try await h.insertJob(queuedJob("limited"), payload: nil).0
        _ = try await h.insertJob(queuedJob("limited"), payload: nil)
        _ = try await h.insertJob(queuedJob("blocked"), payload: nil)
        let later = try await h.insertJob(queuedJob("big", now: 5000), payload: nil).0
        #expect(try await h.claim(now: 2000, memoryMiB: 1024, images: [Self.image], excluding: ["blocked"])?.0.id == l1.id,
                "not big (memory), not other-image (image), not blocked")
        #expect(try await h.claim(now: 2000, memoryMiB: 1024, images: [Self.image], excluding: ["blocked"]) == nil,
                "limited is at its concurrency")
        #expect(try await h.claim(now: 2000, memoryMiB: 4096, images: [Self.image], excluding: ["blocked"])?.0.id == big.id)
        #expect(try await h.claim(now: 2000, memoryMiB: 4096, images: [Self.image], excluding: ["blocked"]) == nil, "the later one is not due")
        #expect(try await h.claim(now: 6000, memoryMiB: 4096, images: [Self.image], excluding: ["blocked"])?.0.id == later.id)
    }

    /// A host that stops heartbeating loses its jobs to a rescue; its late
    /// result is fenced off, and its next heartbeat tells it so.
    @Test func anExpiredLeaseIsRescuedAndTheLateResultRejected() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a", "b"], leaseSeconds: 1)
        defer { withExtendedLifetime(fx) {} }
        let (a, b) = (hosts[0], hosts[1])
        try await deploy(a, "f")
        let j = try await a.insertJob(queuedJob("f", maxAttempts: 2), payload: nil).0
        let (claimed, _) = try #require(try await a.claim(now: 2010, memoryMiB: 1024, images: [Self.image], excluding: []))
        #expect(claimed.id == j.id && claimed.attempts == 1)
        #expect(try await b.rescueExpired(now: 11) == ([], []), "the lease still holds")
        try await Task.sleep(for: .milliseconds(1500))
        #expect(try await b.rescueExpired(now: 12) == ([j.id], []))
        let (again, _) = try #require(try await b.claim(now: 2013, memoryMiB: 1024, images: [Self.image], excluding: []))
        #expect(again.id == j.id && again.attempts == 2)
        let lost = try await a.heartbeat(HostCapacity(slots: 1, memoryMiB: 1, images: [], running: 1, address: ""), running: [JobLease(id: j.id, attempt: 1)])
        #expect(lost.lost == [JobLease(id: j.id, attempt: 1)])
        let late = try await a.finishAttempt(j.id, attempt: 1, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 2014,
                                             retryAt: nil, timings: JobTimings(), outputBytes: 5, logBytes: 0)
        #expect(late?.state == .running && late?.attempts == 2 && late?.outputBytes == 0, "fenced: nothing changed")
        // Even a late finish naming the current attempt is not a's: the lease is b's.
        let wrongOwner = try await a.finishAttempt(j.id, attempt: 2, state: .failed, exitStatus: 1, error: "x", outcome: "exited(1)", now: 2014,
                                                   retryAt: nil, timings: JobTimings(), outputBytes: 0, logBytes: 0)
        #expect(wrongOwner?.state == .running)
        let done = try await b.finishAttempt(j.id, attempt: 2, state: .succeeded, exitStatus: 0, error: nil, outcome: "exited(0)", now: 2015,
                                             retryAt: nil, timings: JobTimings(), outputBytes: 2, logBytes: 0)
        #expect(done?.state == .succeeded && done?.outputBytes == 2)
        let history = try await PostgresCluster.shared().psql(fx.url!, "SELECT number, host, outcome FROM attempts WHERE job = '\(j.id)' ORDER BY number")
        #expect(history == "1|a|lease expired (a)\n2|b|exited(0)")
    }

    @Test func aRescueOutOfAttemptsFailsWithTheReason() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a", "b"], leaseSeconds: 0.5)
        defer { withExtendedLifetime(fx) {} }
        try await deploy(hosts[0], "f")
        let j = try await hosts[0].insertJob(queuedJob("f", maxAttempts: 1), payload: nil).0
        _ = try #require(try await hosts[0].claim(now: 2010, memoryMiB: 1024, images: [Self.image], excluding: []))
        try await Task.sleep(for: .milliseconds(1000))
        #expect(try await hosts[1].rescueExpired(now: 12) == ([], [j.id]))
        let failed = try #require(try await hosts[1].job(j.id))
        #expect(failed.state == .failed && failed.error == "its host (a) stopped heartbeating, and it has no attempts left")
    }

    @Test func heartbeatsKeepLeasesAndCarryCancellation() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a", "b"], leaseSeconds: 1)
        defer { withExtendedLifetime(fx) {} }
        let (a, b) = (hosts[0], hosts[1])
        try await deploy(a, "f")
        let j = try await a.insertJob(queuedJob("f"), payload: nil).0
        _ = try #require(try await a.claim(now: 2010, memoryMiB: 1024, images: [Self.image], excluding: []))
        let capacity = HostCapacity(slots: 2, memoryMiB: 512, images: [Self.image], running: 1, address: "10.0.0.1:8080")
        try await a.register(capacity)
        let events = Mutex<[FleetEvent]>([])
        let listening = a.notifications { e in events.withLock { $0.append(e) } }
        defer { listening.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        for _ in 0..<4 {
            try await Task.sleep(for: .milliseconds(400))
            #expect(try await a.heartbeat(capacity, running: [JobLease(id: j.id, attempt: 1)]) == ([], []))
        }
        #expect(try await b.rescueExpired(now: 20) == ([], []), "1.6 s on a 1 s lease: kept by heartbeats")
        #expect(try await b.requestCancel(j.id))
        #expect(try await a.heartbeat(capacity, running: [JobLease(id: j.id, attempt: 1)]).cancel == [JobLease(id: j.id, attempt: 1)])
        _ = try await b.insertJob(queuedJob("f"), payload: nil)
        for _ in 0..<50 where events.withLock({ $0.count < 2 }) { try await Task.sleep(for: .milliseconds(50)) }
        #expect(events.withLock { $0 } == [.cancel(j.id), .work])
        let listed = try await b.hosts()
        #expect(listed.map(\.id) == ["a"] && listed[0].capacity == capacity && listed[0].alive)
        try await Task.sleep(for: .milliseconds(1200))
        #expect(try await b.hosts()[0].alive == false, "silent for longer than a lease: gone")
    }

    /// A converted image is verified by each host converting it itself
    /// (`swiftlet image prepare`, in the background): its ext4 must hash as
    /// the deploying host's did, or the host claims none of its jobs.
    @Test func hostsConvertAnImageThemselvesAndCompareTheDigest() async throws {
        let (fx, hosts) = try await fleet(hosts: ["a", "b", "c"])
        defer { withExtendedLifetime(fx) {} }
        let fakes = [try FakeSwiftlet(), try FakeSwiftlet(), try FakeSwiftlet(preparedContent: "not the same bytes\n")]
        let states = [TempState(), TempState(), TempState()]
        let runners = try (0..<3).map { try fakes[$0].runner(store: hosts[$0], state: states[$0].path) }
        let reference = "oci:/srv/layout:v1"
        let (f, _) = try await runners[0].deploy(name: "f", spec: FunctionSpec(command: ["cat"], image: reference))
        #expect(await runners[0].verifiedImages == [f.imageSha256])
        #expect(fakes[0].calls == ["image prepare \(reference)"], "the deploy's conversion is the deploying host's")
        for i in 1...2 { await runners[i].refreshImages(hosts[i]) }
        func settled(_ r: Runner) async -> Bool {
            guard let p = await r.preparedImages[reference] else { return false }
            return !p.preparing && p.checkedAt > 0
        }
        for _ in 0..<200 {
            if await settled(runners[1]), await settled(runners[2]) { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(await runners[1].verifiedImages == [f.imageSha256], "the same ext4: verified")
        #expect(await runners[2].verifiedImages == [], "another ext4: not verified")
        #expect(fakes[1].calls == ["image prepare \(reference)"] && fakes[2].calls == ["image prepare \(reference)"])
        // A refresh within the recheck interval converts nothing again.
        await runners[1].refreshImages(hosts[1])
        let verified = await runners[1].verifiedImages
        #expect(fakes[1].calls.count == 1 && verified == [f.imageSha256])
    }

    @Test func anUnreachableDatabaseIsUnavailableNotAHang() async throws {
        let state = TempState()
        let started = ContinuousClock.now
        await #expect {
            _ = try await PostgresStore.open(try PostgresURL("postgres://nobody@/db?host=\(state.path)"), stateDirectory: state.path, hostID: "h",
                                             deadline: .seconds(1), logger: Logger(label: "test"))
        } throws: { e in
            guard case .storeUnavailable = e as? RunnerError else { return false }
            return true
        }
        // Its 1 s deadline, give or take a busy machine. Without the
        // deadline it would wait for good.
        #expect(ContinuousClock.now - started < .seconds(60))
    }
}

@Suite struct PostgresURLTests {
    @Test func tcpAndSocketForms() throws {
        let tcp = try PostgresURL("postgres://u:p%40ss@db.example:6543/runner")
        #expect(tcp.endpoint == .tcp(host: "db.example", port: 6543) && tcp.user == "u" && tcp.password == "p@ss" && tcp.database == "runner")
        #expect(tcp.description == "postgres://u:***@db.example:6543/runner")
        let socket = try PostgresURL("postgresql://me@/jobs?host=/run/postgresql")
        #expect(socket.endpoint == .unixSocket(path: "/run/postgresql/.s.PGSQL.5432") && socket.user == "me" && socket.password == nil)
        let v6 = try PostgresURL("postgres://u@[::1]/d")
        #expect(v6.endpoint == .tcp(host: "::1", port: 5432))
    }

    @Test(arguments: [
        ("mysql://u@h/d", "is not a postgres:// URL"),
        ("postgres://u@h", "names no database"),
        ("postgres://u@h:99999/d", "bad port"),
        ("postgres://u@h/d?sslmode=require", "TLS is not supported"),
        ("postgres://u@h/d?host=relative", "absolute socket directory"),
        ("postgres://u@h/d?x=1", "unknown parameter"),
        ("postgres://u@/d", "names no host"),
        ("postgres://u:secret@h:1/d?x=1", "u:***@h"),
    ])
    func refusesWithAReason(url: String, message: String) {
        #expect {
            _ = try PostgresURL(url)
        } throws: { e in
            "\(e)".contains(message) && !"\(e)".contains("secret")
        }
    }
}

@Suite struct DeadlineTests {
    @Test func theBodyWinsWithinTheLimitAndTheLimitWinsAfter() async throws {
        let started = ContinuousClock.now
        #expect(try await PostgresStore.within(.seconds(3)) { try await Task.sleep(for: .milliseconds(1500)); return 7 } == 7)
        #expect(ContinuousClock.now - started >= .milliseconds(1500))
        let again = ContinuousClock.now
        await #expect(throws: PostgresStore.Unreachable.self) {
            try await PostgresStore.within(.milliseconds(300)) { () async throws -> Int in
                // Ignores cancellation, as a query on a dead connection does.
                let until = ContinuousClock.now + .seconds(2)
                while ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(50)) }
                return 1
            }
        }
        #expect(ContinuousClock.now - again < .seconds(1), "the limit, not the straggler, decides")
    }
}
