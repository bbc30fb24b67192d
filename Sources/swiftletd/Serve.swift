import ArgumentParser
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import ServiceLifecycle
import SwiftletRunner

/// `swiftletd serve`: the job runner in the foreground.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the job runner: functions invoked over HTTP, each invocation in its own restored microVM.",
        discussion: "Ready when GET /readyz answers 200. SIGTERM drains: no new work, running jobs get --drain-timeout, the rest are re-queued or failed, every VMM stops, exit 0."
    )

    @Option(help: ArgumentHelp("Listen on this address.", valueName: "host:port"))
    var listen = "127.0.0.1:8080"

    @Option(help: "Where the database, job output and snapshots live (created).")
    var stateDir: String

    @Option(help: ArgumentHelp("The store: SQLite under --state-dir (the default), or a PostgreSQL database that a fleet of runners shares (postgres://user:password@host:port/db, or postgres:///db?host=/run/postgresql for a Unix socket).", valueName: "url"))
    var store: String?

    @Option(help: "This runner's id in the fleet (default: the host name).")
    var hostId: String?

    @Option(help: "Seconds a fleet host's lease on a running job lasts without a heartbeat (it heartbeats 4 times a lease, at most once a second).")
    var leaseSeconds: Double = 30

    @Option(help: "Where snapshots are kept (default: <state-dir>/snapshots). Runners on one machine may share one.")
    var snapshotDir: String?

    @Option(help: ArgumentHelp("Where other hosts and clients reach this runner (shown in GET /v1/hosts; default: --listen).", valueName: "host:port"))
    var advertise: String?

    @Option(help: "Bearer tokens, one per line: required on every API call. Required when --listen is not loopback.")
    var tokenFile: String?

    @Option(help: "AWS access keys for SigV4 on the Lambda route, one `ACCESS_KEY_ID SECRET` per line.")
    var accessKeysFile: String?

    @Option(help: "VM slots: running plus warm VMs (default: the number of CPUs).")
    var maxVms: Int?

    @Option(help: "Guest memory in MiB that running and warm VMs may take together (default: 3/4 of the host's).")
    var memoryBudget: Int?

    @Option(help: "Queued jobs beyond this are refused with 429.")
    var maxQueued = 10_000

    @Option(help: "Seconds a synchronous invoke waits for a VM slot before 429.")
    var syncWait: Double = 30

    @Option(help: "Seconds finished jobs and their output are kept.")
    var retention: Double = 7 * 86400

    @Option(help: "Seconds running jobs get to finish after SIGTERM.")
    var drainTimeout: Double = 30

    @Option(help: "Bytes of stdout a handler may write (more fails the invocation).")
    var maxOutput = 6 * 1024 * 1024

    @Option(help: "Functions to deploy at start: a JSON object of name to spec, as PUT /v1/functions/{name} takes it.")
    var functions: String?

    @Option(help: "The swiftlet binary that runs each VM (default: the one beside swiftletd, else swiftlet on PATH).")
    var swiftlet: String?

    @Option(help: "The guest kernel (default: swiftlet's).")
    var kernel: String?

    @Option(name: .customLong("image-root"), help: ArgumentHelp("Accept only function images under this directory (links resolved); repeatable. Without it, any path the daemon can read.", valueName: "dir"))
    var imageRoots: [String] = []

    @Option(help: "What a function's \"image\": \"default\" means (default: the rootfs `make rootfs` built).")
    var rootfs: String?

    @Option(help: "Seconds before a failed queued job's first retry (each later one doubles, with jitter).")
    var retryDelay: Double = 1

    @Option(help: "Warm VMs on this host, all functions' pools together (0 turns warm pools off; default: only slots and memory limit them).")
    var maxWarm: Int?

    @Option(help: "Added to each VMM's nice value (0 to 19), so that VMs yield the CPU to the daemon's short bursts.")
    var vmNice: Int = 5

    @Flag(inversion: .prefixedNo, help: "Jail every VMM (swiftlet run --jail; needs root). Default: on when root.")
    var jail: Bool?

    func validate() throws {
        guard Self.parseListen(listen) != nil else { throw ValidationError("--listen '\(listen)' is not host:port") }
        if let m = maxVms, !(1...4096).contains(m) { throw ValidationError("--max-vms must be 1 to 4096") }
        if let m = memoryBudget, m < 32 { throw ValidationError("--memory-budget must be at least 32 MiB") }
        guard maxQueued >= 1 else { throw ValidationError("--max-queued must be at least 1") }
        for (v, name) in [(syncWait, "--sync-wait"), (retention, "--retention"), (drainTimeout, "--drain-timeout"), (retryDelay, "--retry-delay")] {
            guard v.isFinite, v >= 0, v <= 10 * 365 * 86400 else { throw ValidationError("\(name) must be a number of seconds") }
        }
        if let w = maxWarm, w < 0 { throw ValidationError("--max-warm must be 0 or more") }
        guard (0...19).contains(vmNice) else { throw ValidationError("--vm-nice must be 0 to 19") }
        guard maxOutput >= 1 else { throw ValidationError("--max-output must be positive") }
        if jail == true && geteuid() != 0 { throw ValidationError("--jail needs root") }
        if let store {
            do { _ = try PostgresURL(store) } catch { throw ValidationError("--store: \(error)") }
        }
        guard leaseSeconds.isFinite, (1...3600).contains(leaseSeconds) else { throw ValidationError("--lease-seconds must be 1 to 3600") }
        if let h = hostId, !FunctionSpec.isValidName(h) { throw ValidationError("--host-id must be 1 to 64 letters, digits, '-' or '_'") }
        if tokenFile == nil, accessKeysFile == nil, let (host, _) = Self.parseListen(listen), !Self.isLoopback(host) {
            throw ValidationError("--listen \(listen) is not loopback-only: give --token-file (or --access-keys-file)")
        }
    }

    static func parseListen(_ s: String) -> (String, Int)? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(s[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    static func isLoopback(_ host: String) -> Bool { host == "localhost" || host == "::1" || host.hasPrefix("127.") }

    func run() async throws {
        // A VMM that exits before reading its payload must not SIGPIPE the daemon.
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        let logger = Logger(label: "swiftletd")
        do {
            try await serve(logger: logger)
        } catch let e as ServeFailure {
            // One line, non-zero exit.
            FileHandle.standardError.write(Data("swiftletd: error: \(e.message)\n".utf8))
            throw ExitCode(1)
        }
    }

    struct ServeFailure: Error { var message: String }

    private func serve(logger: Logger) async throws {
        let (host, port) = Self.parseListen(listen)!
        let auth = try loadAuth()
        let swiftletPath = try resolveSwiftlet()
        let cacheRoot = ProcessInfo.processInfo.environment["SWIFTLET_CACHE"]
            ?? (ProcessInfo.processInfo.environment["XDG_CACHE_HOME"].map { $0 + "/swiftlet" })
            ?? (NSHomeDirectory() + "/.cache/swiftlet")
        var config = RunnerConfig(
            stateDirectory: stateDir, swiftlet: swiftletPath, kernel: kernel,
            defaultRootfs: rootfs ?? cacheRoot + "/default/rootfs.ext4",
            maxVMs: maxVms ?? ProcessInfo.processInfo.activeProcessorCount,
            memoryBudgetMiB: memoryBudget ?? Int(ProcessInfo.processInfo.physicalMemory / 1024 / 1024 * 3 / 4),
            jail: jail ?? (geteuid() == 0))
        config.maxQueued = maxQueued
        for root in imageRoots where access(root, R_OK | X_OK) != 0 {
            throw ValidationError("--image-root \(root): not a readable directory")
        }
        config.imageRoots = imageRoots.isEmpty ? nil : imageRoots
        config.syncWaitSeconds = syncWait
        config.retentionSeconds = retention
        config.drainTimeoutSeconds = drainTimeout
        config.outputLimit = maxOutput
        config.retryBaseSeconds = retryDelay
        if let maxWarm { config.maxWarm = maxWarm }
        config.vmNice = vmNice
        config.advertiseAddress = advertise ?? listen
        config.snapshotDirectory = snapshotDir
        let runner: Runner
        do {
            let host = hostId ?? String(ProcessInfo.processInfo.hostName.map { FunctionSpec.isValidName(String($0)) ? $0 : "-" }.prefix(64))
            let store = try await openStore(store, stateDirectory: stateDir, hostID: host, leaseSeconds: leaseSeconds, logger: logger)
            runner = Runner(config: config, store: store, logger: logger)
        } catch { throw ServeFailure(message: "\(error)") }
        try await runner.start()
        if let functions { try await deployDeclared(functions, runner: runner) }

        let server = Server(runner: runner, auth: auth, logger: logger)
        let settings = runner.config
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(maxHeaderFieldSize: 16 * 1024, maxHeaderListSize: 64 * 1024, maxHeaderFieldCount: 100)
        let app = Application(
            router: server.router(),
            server: .http1(configuration: .init(idleTimeout: .seconds(120), httpDecoderConfiguration: decoder)),
            configuration: .init(address: .hostname(host, port: port), serverName: "swiftletd"),
            onServerRunning: { channel in
                logger.info("listening", metadata: ["address": "\(channel.localAddress?.description ?? listen)", "state_dir": "\(stateDir)",
                                                    "max_vms": "\(settings.maxVMs)", "memory_budget_mib": "\(settings.memoryBudgetMiB)",
                                                    "jail": "\(settings.jail)", "swiftlet": "\(swiftletPath)"])
            },
            logger: logger
        )
        let housekeeping = Housekeeping(runner: runner)
        // Shut down in reverse order: the runner drains first (new calls get
        // 503, running jobs finish or are re-queued), then the HTTP server.
        let group = ServiceGroup(configuration: .init(services: [.init(service: app), .init(service: housekeeping)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("stopped")
    }

    private func loadAuth() throws -> Auth {
        var auth = Auth(tokenDigests: [], sigV4: nil)
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else { throw ServeFailure(message: "--token-file \(tokenFile) cannot be read") }
            let tokens = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
            guard !tokens.isEmpty else { throw ServeFailure(message: "--token-file \(tokenFile) holds no token") }
            guard tokens.allSatisfy({ $0.utf8.count >= 16 }) else { throw ServeFailure(message: "--token-file \(tokenFile): every token must be at least 16 characters") }
            auth.tokenDigests = tokens.map { Array(SHA256Digest.of($0)) }
        }
        if let accessKeysFile {
            do { auth.sigV4 = SigV4Verifier(keys: try loadAccessKeys(path: accessKeysFile)) } catch {
                throw ServeFailure(message: "--access-keys-file: \(error)")
            }
        }
        return auth
    }

    private func resolveSwiftlet() throws -> String {
        if let swiftlet {
            guard access(swiftlet, X_OK) == 0 else { throw ServeFailure(message: "--swiftlet \(swiftlet) is not an executable") }
            return URL(fileURLWithPath: swiftlet).standardizedFileURL.path
        }
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")).map { URL(fileURLWithPath: $0).deletingLastPathComponent() } ?? beside
        for dir in [exe, beside] {
            let p = dir.appendingPathComponent("swiftlet").path
            if access(p, X_OK) == 0 { return p }
        }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let p = "\(dir)/swiftlet"
            if access(p, X_OK) == 0 { return p }
        }
        throw ServeFailure(message: "no swiftlet binary beside swiftletd or on PATH: give --swiftlet")
    }

    private func deployDeclared(_ path: String, runner: Runner) async throws {
        guard let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ServeFailure(message: "--functions \(path): not a JSON object of name to spec")
        }
        for (name, spec) in object.sorted(by: { $0.key < $1.key }) {
            do {
                let body = try JSONSerialization.data(withJSONObject: spec)
                _ = try await runner.deploy(name: name, spec: try FunctionSpec.decode(Array(body)))
            } catch {
                throw ServeFailure(message: "--functions \(path): \(name): \(error)")
            }
        }
    }
}

enum SHA256Digest {
    static func of(_ s: String) -> [UInt8] { Array(SHA256.hash(data: Array(s.utf8))) }
}

/// The runner as a service: periodic pruning while it runs, the drain on
/// graceful shutdown.
struct Housekeeping: Service {
    let runner: Runner

    func run() async throws {
        let pruner = Task {
            while !Task.isCancelled {
                await runner.prune()
                try? await Task.sleep(for: .seconds(60))
            }
        }
        // Until SIGTERM; the drain then finishes before the HTTP server stops.
        try? await gracefulShutdown()
        pruner.cancel()
        await runner.drain()
    }
}
