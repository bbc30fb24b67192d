import Foundation
@testable import SwiftletRunner

/// A throwaway PostgreSQL cluster for the store tests: Debian's server
/// binaries (`make deps` installs `postgresql`), `initdb` in a temporary
/// directory, listening only on a Unix socket there. One per test process,
/// started on first use; each test gets its own database. The postmaster
/// dies with this process (PR_SET_PDEATHSIG through setpriv), and the
/// directory is removed at exit.
///
/// Everything here blocks (initdb, psql), so it runs on a thread of its
/// own, never on the cooperative pool: a blocked pool thread (there are as
/// many as cores, two on CI) stalls every store's queries and deadline
/// timers, and a store then reports PostgreSQL unreachable.
final class PostgresCluster: Sendable {
    let directory: String
    let socketDirectory: String
    let process: Process
    let user: String

    /// The cluster, or why there is none: the tests fail with that reason
    /// (never skip: PostgreSQL is part of the test set-up). Started once.
    static func shared() async throws -> PostgresCluster { try await starting.value }
    /// The thread that starts the postmaster never ends: PR_SET_PDEATHSIG
    /// fires when the spawning *thread* exits, not the process.
    private static let starting = Task { try await offPool(thenPark: true) { try PostgresCluster() } }

    /// `body` on a new thread; the caller's task is suspended, not blocking.
    static func offPool<T: Sendable>(thenPark: Bool = false, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            Thread {
                c.resume(with: Result { try body() })
                while thenPark { pause() }
            }.start()
        }
    }

    struct ClusterError: Error, CustomStringConvertible { var description: String }

    private init() throws(ClusterError) {
        guard let bin = Self.binDirectory() else { throw ClusterError(description: "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)") }
        directory = NSTemporaryDirectory() + "swiftlet-test-pg-\(getpid())"
        socketDirectory = directory + "/socket"
        // initdb and postgres refuse to run as root: as Debian's postgres user then.
        let asRoot = geteuid() == 0
        user = asRoot ? "postgres" : (ProcessInfo.processInfo.environment["USER"] ?? "postgres")
        let drop = asRoot ? ["/usr/bin/setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"] : ["/usr/bin/setpriv"]
        do {
            try FileManager.default.createDirectory(atPath: socketDirectory, withIntermediateDirectories: true)
            if asRoot { try Self.sh(["/bin/chown", "-R", "postgres:postgres", directory]) }
            try Self.sh(drop + ["\(bin)/initdb", "-D", directory + "/data", "-U", user, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw ClusterError(description: "initdb: \(error)")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: drop[0])
        process.arguments = Array(drop.dropFirst()) + ["--pdeathsig", "KILL", "\(bin)/postgres", "-D", directory + "/data", "-k", socketDirectory,
                                                       "-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=200"]
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        do { try process.run() } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw ClusterError(description: "starting postgres: \(error)")
        }
        let dir = directory
        let pid = process.processIdentifier
        Self.atExit.withLock { $0 = (pid, dir) }
        atexit {
            guard let (pid, dir) = PostgresCluster.atExit.withLock({ $0 }) else { return }
            kill(pid, SIGINT)  // fast shutdown
            var status: Int32 = 0
            for _ in 0..<100 where waitpid(pid, &status, WNOHANG) == 0 { usleep(50_000) }
            kill(pid, SIGKILL)
            try? FileManager.default.removeItem(atPath: dir)
        }
        // Ready when the socket accepts a query.
        for _ in 0..<200 {
            if (try? Self.sh(["\(bin)/psql", "-h", socketDirectory, "-U", user, "-d", "postgres", "-Atc", "SELECT 1"])) != nil { return }
            usleep(50_000)
        }
        throw ClusterError(description: "postgres did not start within 10 s")
    }

    private static let atExit = Mutex<(Int32, String)?>(nil)

    static func binDirectory() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        return versions.last.map { "\(root)/\($0)/bin" }.flatMap { FileManager.default.isExecutableFile(atPath: $0 + "/postgres") ? $0 : nil }
    }

    @discardableResult
    static func sh(_ argv: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: argv[0])
        p.arguments = Array(argv.dropFirst())
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw ClusterError(description: "\(argv.last ?? "") failed: \(text)") }
        return text
    }

    /// A new empty database; its URL.
    func createDatabase() async throws -> String {
        let name = "t\(UInt32.random(in: 0...UInt32.max))"
        try await sh(["\(Self.binDirectory()!)/psql", "-h", socketDirectory, "-U", user, "-d", "postgres", "-Atc", "CREATE DATABASE \(name)"])
        return "postgres://\(user)@/\(name)?host=\(socketDirectory)"
    }

    /// psql on a database: `query`'s output, unaligned.
    func psql(_ url: String, _ query: String) async throws -> String {
        let db = String(url[url.index(after: url.range(of: "@/")!.lowerBound)...].dropFirst().prefix { $0 != "?" })
        return try await sh(["\(Self.binDirectory()!)/psql", "-h", socketDirectory, "-U", user, "-d", db, "-Atc", query])
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func sh(_ argv: [String]) async throws -> String { try await Self.offPool { try Self.sh(argv) } }
}

import Synchronization
