import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import SwiftletRunner

/// Who may call: bearer tokens (`--token-file`, one per line) on every
/// route but the health checks, and on the Lambda route also AWS SigV4
/// signatures by the keys of `--access-keys-file`. With neither file the
/// listener must be loopback-only, and anyone on this host may call.
struct Auth: Sendable {
    /// SHA-256 of each token: comparing digests takes the same time
    /// whatever the token's length or content.
    var tokenDigests: [[UInt8]]
    var sigV4: SigV4Verifier?

    var open: Bool { tokenDigests.isEmpty && sigV4 == nil }

    func bearerValid(_ headers: HTTPFields) -> Bool {
        guard let value = headers[.authorization], value.hasPrefix("Bearer ") else { return false }
        let digest = Array(SHA256.hash(data: Array(value.utf8.dropFirst(7))))
        var match = false
        for d in tokenDigests {
            var diff: UInt8 = 0
            for i in 0..<32 { diff |= d[i] ^ digest[i] }
            match = match || diff == 0
        }
        return match
    }
}

/// The routes: native API (`/v1`), Lambda's invoke, health, metrics, spec.
struct Server {
    let runner: Runner
    let auth: Auth
    let logger: Logger
    static let functionBodyLimit = 256 * 1024

    func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: AccessLog(logger: logger))
        router.add(middleware: ErrorBodies())
        router.get("/healthz") { _, _ in APIModel.json(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            await runner.isDraining ? APIModel.json(["status": "draining"], status: .serviceUnavailable) : APIModel.json(["status": "ready"])
        }
        router.get("/openapi.yaml") { _, _ in
            APIModel.bytes(OpenAPISpec.bytes, contentType: "application/yaml")
        }
        router.get("/metrics") { request, _ in
            if let denied = checkBearer(request) { return denied }
            let counts = (try? await runner.store.jobCounts()) ?? []
            return APIModel.bytes(runner.metrics.render(counts: counts), contentType: "text/plain; version=0.0.4")
        }

        // Functions
        router.put("/v1/functions/:name") { request, context in
            var request = request
            if let denied = checkBearer(request) { return denied }
            let name = try context.parameters.require("name")
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: Self.functionBodyLimit) } catch {
                return APIModel.error(.contentTooLarge, "payload_too_large", "a function spec is at most \(Self.functionBodyLimit) bytes")
            }
            return await respond {
                guard FunctionSpec.isValidName(name) else { throw RunnerError.badRequest("function name '\(name)' must be 1 to 64 letters, digits, '-' or '_'") }
                let spec = try FunctionSpec.decode(Array(buffer: body))
                let (f, created) = try await runner.deploy(name: name, spec: spec)
                return APIModel.json(APIModel.function(f), status: created ? .created : .ok)
            }
        }
        router.get("/v1/functions/:name") { request, context in
            if let denied = checkBearer(request) { return denied }
            let name = try context.parameters.require("name")
            return await respond {
                try Self.checkName(name)
                guard let f = try await runner.store.function(name) else { throw RunnerError.functionNotFound(name) }
                return APIModel.json(APIModel.function(f))
            }
        }
        router.get("/v1/functions") { request, _ in
            if let denied = checkBearer(request) { return denied }
            return await respond { APIModel.json(["functions": try await runner.store.functions().map(APIModel.function)]) }
        }
        router.get("/v1/hosts") { request, _ in
            if let denied = checkBearer(request) { return denied }
            return await respond { APIModel.json(["hosts": try await runner.hosts().map(APIModel.host)]) }
        }
        router.delete("/v1/functions/:name") { request, context in
            if let denied = checkBearer(request) { return denied }
            let name = try context.parameters.require("name")
            return await respond {
                try Self.checkName(name)
                try await runner.removeFunction(name)
                return Response(status: .noContent)
            }
        }

        // Jobs
        router.post("/v1/functions/:name/jobs") { request, context in
            var request = request
            if let denied = checkBearer(request) { return denied }
            let name = try context.parameters.require("name")
            let key = request.headers[HTTPField.Name("Idempotency-Key")!]
            if let key, key.isEmpty || key.utf8.count > 255 || !key.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) {
                return APIModel.error(.badRequest, "bad_request", "Idempotency-Key must be 1 to 255 printable ASCII characters")
            }
            let limit = runner.config.asyncPayloadLimit
            let body: ByteBuffer
            do { body = try await request.collectBody(upTo: limit) } catch {
                return APIModel.error(RunnerError.payloadTooLarge(limit: limit))
            }
            return await respond {
                let (job, replayed) = try await runner.submit(function: name, payload: Array(buffer: body), idempotencyKey: key)
                return APIModel.json(APIModel.job(job), status: replayed ? .ok : .accepted,
                                     headers: replayed ? [HTTPField.Name("Idempotent-Replayed")!: "true"] : [:])
            }
        }
        router.get("/v1/jobs/:id") { request, context in
            if let denied = checkBearer(request) { return denied }
            let id = try context.parameters.require("id")
            return await respond {
                var wait = 0.0
                if let w = request.uri.queryParameters["wait"] {
                    guard let v = Double(String(w)), v.isFinite, (0...60).contains(v) else { throw RunnerError.badRequest("wait must be 0 to 60 seconds") }
                    wait = v
                }
                return APIModel.json(APIModel.job(try await runner.waitFinal(id, seconds: wait)))
            }
        }
        router.get("/v1/jobs/:id/output") { request, context in
            if let denied = checkBearer(request) { return denied }
            let id = try context.parameters.require("id")
            return await respond { APIModel.bytes(try await runner.readOutput(id, log: false), contentType: "application/octet-stream") }
        }
        router.get("/v1/jobs/:id/log") { request, context in
            if let denied = checkBearer(request) { return denied }
            let id = try context.parameters.require("id")
            return await respond { APIModel.bytes(try await runner.readOutput(id, log: true), contentType: "text/plain; charset=utf-8") }
        }
        router.delete("/v1/jobs/:id") { request, context in
            if let denied = checkBearer(request) { return denied }
            let id = try context.parameters.require("id")
            return await respond { APIModel.json(APIModel.job(try await runner.cancel(id))) }
        }
        router.get("/v1/jobs") { request, _ in
            if let denied = checkBearer(request) { return denied }
            return await respond {
                let q = request.uri.queryParameters
                var state: JobState?
                if let s = q["state"] {
                    guard let v = JobState(rawValue: String(s)) else {
                        throw RunnerError.badRequest("state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    state = v
                }
                var limit = 100
                if let l = q["limit"] {
                    guard let v = Int(String(l)), (1...1000).contains(v) else { throw RunnerError.badRequest("limit must be 1 to 1000") }
                    limit = v
                }
                var cursor: Int64?
                if let c = q["cursor"] {
                    guard let v = Int64(String(c)), v > 0 else { throw RunnerError.badRequest("cursor is not one this API gave") }
                    cursor = v
                }
                let function = q["function"].map(String.init)
                if let function { try Self.checkName(function) }
                let jobs = try await runner.store.jobs(function: function, state: state, limit: limit + 1, before: cursor)
                let page = Array(jobs.prefix(limit))
                let next: Any = jobs.count > limit ? String(page.last!.seq) : NSNull()
                return APIModel.json(["jobs": page.map(APIModel.job), "nextCursor": next])
            }
        }

        LambdaAPI(runner: runner, auth: auth, logger: logger).add(to: router)
        return router
    }

    static func checkName(_ name: String) throws(RunnerError) {
        guard FunctionSpec.isValidName(name) else { throw .badRequest("function name '\(name)' must be 1 to 64 letters, digits, '-' or '_'") }
    }

    /// nil when the request may go on; else the 401.
    func checkBearer(_ request: Request) -> Response? {
        if auth.tokenDigests.isEmpty || auth.bearerValid(request.headers) { return nil }
        return APIModel.error(.unauthorized, "unauthorized", "a valid bearer token is required (Authorization: Bearer TOKEN)",
                              headers: [.wwwAuthenticate: "Bearer"])
    }

    /// Runs `body`, mapping a RunnerError to its response.
    func respond(_ body: () async throws -> Response) async -> Response {
        do { return try await body() } catch let e as RunnerError {
            if case .internalFailure = e { logger.error("request failed", metadata: ["error": "\(e)"]) }
            return APIModel.error(e)
        } catch {
            logger.error("request failed", metadata: ["error": "\(error)"])
            return APIModel.error(.internalServerError, "internal", "\(error)")
        }
    }
}

/// One JSON log line per request: method, path, status, microseconds.
struct AccessLog: RouterMiddleware {
    typealias Context = BasicRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            log(request, status: response.status.code, start: start)
            return response
        } catch {
            log(request, status: (error as? HTTPResponseError)?.status.code ?? 500, start: start)
            throw error
        }
    }

    private func log(_ request: Request, status: Int, start: ContinuousClock.Instant) {
        let us = (ContinuousClock.now - start).components
        logger.info("request", metadata: [
            "method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(status)",
            "us": "\(us.seconds * 1_000_000 + us.attoseconds / 1_000_000_000_000)",
        ])
    }
}

/// Errors the router raises itself (no route, a body over a limit) get the
/// API's JSON error body too; a path served with other methods is a 405
/// with `Allow`.
struct ErrorBodies: RouterMiddleware {
    typealias Context = BasicRequestContext
    /// Each route's path, `:` for a parameter, and its methods.
    static let routes: [([Substring], [String])] = [
        ("/healthz", ["GET"]), ("/readyz", ["GET"]), ("/openapi.yaml", ["GET"]), ("/metrics", ["GET"]),
        ("/v1/functions", ["GET"]), ("/v1/functions/:", ["GET", "PUT", "DELETE"]), ("/v1/functions/:/jobs", ["POST"]), ("/v1/hosts", ["GET"]),
        ("/v1/jobs", ["GET"]), ("/v1/jobs/:", ["GET", "DELETE"]), ("/v1/jobs/:/output", ["GET"]), ("/v1/jobs/:/log", ["GET"]),
        ("/2015-03-31/functions/:/invocations", ["POST"]),
    ].map { ($0.0.split(separator: "/"), $0.1) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            if error.status == .notFound {
                let path = request.uri.path.split(separator: "/")
                if let route = Self.routes.first(where: { r in
                    r.0.count == path.count && zip(r.0, path).allSatisfy { $0 == ":" || $0 == $1 }
                }), !route.1.contains(request.method.rawValue) {
                    return APIModel.error(.methodNotAllowed, "method_not_allowed", "\(request.method.rawValue) is not served on this path",
                                          headers: [.allow: route.1.joined(separator: ", ")])
                }
                return APIModel.error(.notFound, "not_found", "no such route: \(request.method.rawValue) \(request.uri.path)")
            }
            return APIModel.error(error.status, "bad_request", error.body ?? error.status.reasonPhrase)
        }
    }
}

/// The committed spec, read once from the resource bundle.
enum OpenAPISpec {
    static let bytes: [UInt8] = {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
              let data = try? Data(contentsOf: url) else { return Array("openapi: 3.0.3\n".utf8) }
        return Array(data)
    }()
}
