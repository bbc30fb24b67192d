import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import SwiftletRunner
import SwiftletSys

/// AWS Lambda's Invoke (`POST /2015-03-31/functions/{name}/invocations`),
/// as boto3 and the AWS CLI speak it: invocation types RequestResponse,
/// Event and DryRun, `LogType: Tail`, function errors as 200 with
/// `X-Amz-Function-Error`, service errors as `x-amzn-ErrorType` plus a
/// `{"__type", "message"}` body.
struct LambdaAPI {
    let runner: Runner
    let auth: Auth
    let logger: Logger

    func add(to router: Router<BasicRequestContext>) {
        router.post("/2015-03-31/functions/:name/invocations") { request, context in
            var request = request
            let rawName = try context.parameters.require("name")
            let limit = runner.config.syncPayloadLimit
            let body: [UInt8]
            do { body = Array(buffer: try await request.collectBody(upTo: limit)) } catch {
                return Self.error("RequestTooLargeException", .contentTooLarge, "Request must be smaller than \(limit) bytes for the InvokeFunction operation")
            }
            // The request is in: the daemon's own time starts here.
            let received = SwiftletSys.Clock.monotonicNanos()
            if let denied = authenticate(request, body: body) { return denied }
            return await invoke(request, rawName: rawName, body: body, received: received)
        }
    }

    /// nil when the caller may invoke: a valid SigV4 signature by a known
    /// key, or a valid bearer token, or no credentials configured at all.
    func authenticate(_ request: Request, body: [UInt8]) -> Response? {
        // HTTP/1.1's Host is the request's authority here, not one of its header fields; every SDK signs it.
        var headers = request.headers.map { (name: $0.name.rawName, value: $0.value) }
        if let authority = request.head.authority, !headers.contains(where: { $0.name.lowercased() == "host" }) {
            headers.append((name: "host", value: authority))
        }
        if let verifier = auth.sigV4, SigV4Verifier.isSigned(headers) {
            let signed = SigV4Request(method: request.method.rawValue, path: request.uri.path, query: request.uri.query ?? "",
                                      headers: headers, body: body)
            do {
                _ = try verifier.verify(signed)
                return nil
            } catch {
                switch error {
                case let .unknownAccessKey(k):
                    return Self.error("UnrecognizedClientException", .forbidden, "The security token included in the request is invalid: unknown access key \(k)")
                case .signatureMismatch:
                    return Self.error("InvalidSignatureException", .forbidden, "The request signature we calculated does not match the signature you provided")
                default:
                    return Self.error("InvalidSignatureException", .forbidden, "\(error)")
                }
            }
        }
        if auth.open || (!auth.tokenDigests.isEmpty && auth.bearerValid(request.headers)) { return nil }
        return Self.error("MissingAuthenticationTokenException", .forbidden, "Missing or invalid authentication (SigV4 or a bearer token)")
    }

    func invoke(_ request: Request, rawName: String, body: [UInt8], received: UInt64) async -> Response {
        let type = request.headers[HTTPField.Name("X-Amz-Invocation-Type")!] ?? "RequestResponse"
        let logType = request.headers[HTTPField.Name("X-Amz-Log-Type")!] ?? "None"
        guard ["RequestResponse", "Event", "DryRun"].contains(type) else {
            return Self.error("InvalidRequestContentException", .badRequest, "X-Amz-Invocation-Type must be RequestResponse, Event or DryRun")
        }
        guard ["None", "Tail"].contains(logType) else {
            return Self.error("InvalidRequestContentException", .badRequest, "X-Amz-Log-Type must be None or Tail")
        }
        guard let name = Self.functionName(rawName) else {
            return Self.error("InvalidRequestContentException", .badRequest, "'\(rawName)' is not a function name or ARN")
        }
        do {
            guard let f = try await runner.store.function(name) else { throw RunnerError.functionNotFound(name) }
            if let q = request.uri.queryParameters["Qualifier"], q != "$LATEST", q != String(f.version) {
                throw RunnerError.functionNotFound("\(name):\(q)")
            }
            let version: HTTPFields = [HTTPField.Name("X-Amz-Executed-Version")!: String(f.version)]
            switch type {
            case "DryRun":
                _ = try await runner.invoke(f, payload: body, dryRun: true)
                return Response(status: .noContent, headers: version)
            case "Event":
                let (job, _) = try await runner.submit(function: name, payload: body, idempotencyKey: nil)
                return Response(status: .accepted, headers: [HTTPField.Name("X-Amzn-RequestId")!: job.id])
            default:
                guard let r = try await runner.invoke(f, payload: body) else { return Response(status: .noContent) }
                var headers = version
                headers[HTTPField.Name("X-Amzn-RequestId")!] = r.job.id
                headers[HTTPField.Name("X-Amz-Executed-Version")!] = String(r.job.version)
                if logType == "Tail" { headers[HTTPField.Name("X-Amz-Log-Result")!] = Data(r.logTail).base64EncodedString() }
                let response: Response
                if case .exited(0) = r.outcome {
                    response = APIModel.bytes(r.output, contentType: "application/octet-stream", headers: headers)
                } else {
                    headers[HTTPField.Name("X-Amz-Function-Error")!] = "Unhandled"
                    let (errorType, message) = Self.functionError(r.outcome, job: r.job)
                    response = APIModel.json(["errorType": errorType, "errorMessage": message], headers: headers)
                }
                let exited = r.vmExitedAt, jobID = r.job.id
                return Self.afterSent(Self.withServerTiming(response, received: received, r)) { [logger] in
                    // Server-Timing ends at the response built; this adds its handing to SwiftNIO to write.
                    if exited > 0 {
                        let ms = Double(SwiftletSys.Clock.monotonicNanos() - exited) / 1e6
                        logger.info("response sent", metadata: ["job": "\(jobID)", "vm_exit_to_sent_ms": "\(ms)"])
                    }
                    runner.responded()
                }
            }
        } catch let e as RunnerError {
            return Self.error(e)
        } catch {
            return Self.error("ServiceException", .internalServerError, "\(error)")
        }
    }

    /// `response`, calling `sent` once its body is written or its write failed.
    static func afterSent(_ response: Response, _ sent: @escaping @Sendable () -> Void) -> Response {
        var response = response
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            do { try await body.write(writer) } catch {
                sent()
                throw error
            }
            sent()
        }
        return response
    }

    /// `Server-Timing` (W3C): the daemon's own time, from the request
    /// received to the VMM given the job (exec'd, or a warm one's start
    /// byte), and from the VMM reaped to the response built; its wait for a
    /// slot is `queue`. benchmarks/runner reads it.
    static func withServerTiming(_ response: Response, received: UInt64, _ r: InvokeResult) -> Response {
        guard r.vmHandedOverAt >= received, r.vmExitedAt > 0 else { return response }
        var response = response
        let done = SwiftletSys.Clock.monotonicNanos()
        let queue = (r.job.timings.queueMs ?? 0)
        func ms(_ n: UInt64) -> String { SwiftletSys.Clock.millisecondsText(n, digits: 3) }
        response.headers[HTTPField.Name("Server-Timing")!] =
            "daemon-pre;dur=\(ms(r.vmHandedOverAt - received)), queue;dur=\(ms(UInt64(max(0, queue) * 1e6))), daemon-post;dur=\(ms(done - r.vmExitedAt))"
        return response
    }

    /// A name, or `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`, percent-decoded.
    static func functionName(_ raw: String) -> String? {
        let decoded = raw.removingPercentEncoding ?? raw
        if decoded.hasPrefix("arn:") {
            let parts = decoded.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count >= 7, parts[2] == "lambda", parts[5] == "function" else { return nil }
            return FunctionSpec.isValidName(String(parts[6])) ? String(parts[6]) : nil
        }
        return FunctionSpec.isValidName(decoded) ? decoded : nil
    }

    static func functionError(_ outcome: AttemptOutcome, job: JobRecord) -> (String, String) {
        switch outcome {
        case let .exited(c): return ("ExitStatus", "the handler exited with status \(c)")
        case let .signalled(s): return ("Signal", "the handler was killed by signal \(s)")
        case .timedOut: return ("Timeout", "the handler ran past its timeout")
        case let .outputTooLarge(limit): return ("OutputTooLarge", "the handler's output went over \(limit) bytes")
        case .cancelled: return ("Cancelled", "the invocation \(job.id) was cancelled")
        case let .infrastructure(why): return ("Runtime.VMMFailure", "the VMM failed: \(why)")
        }
    }

    static func error(_ e: RunnerError) -> Response {
        switch e {
        case .functionNotFound: return error("ResourceNotFoundException", .notFound, "Function not found: \(e)")
        case .jobNotFound: return error("ResourceNotFoundException", .notFound, e.description)
        case .badRequest: return error("InvalidRequestContentException", .badRequest, e.description)
        case .payloadTooLarge: return error("RequestTooLargeException", .contentTooLarge, e.description)
        case let .tooManyRequests(reason, retry):
            return error("TooManyRequestsException", .tooManyRequests, e.description, extra: ["Reason": reason.lambdaReason],
                         headers: [.retryAfter: String(retry)])
        case let .alreadyFinal(id, state):
            return error("ResourceConflictException", .conflict, "invocation \(id) is \(state.rawValue)")
        case .draining: return error("ServiceException", .serviceUnavailable, e.description)
        case .internalFailure: return error("ServiceException", .internalServerError, e.description)
        case .storeUnavailable: return error("ServiceException", .serviceUnavailable, e.description, headers: [.retryAfter: "2"])
        }
    }

    static func error(_ type: String, _ status: HTTPResponse.Status, _ message: String, extra: [String: String] = [:],
                      headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[HTTPField.Name("x-amzn-ErrorType")!] = type
        var body: [String: Any] = ["__type": type, "message": message]
        for (k, v) in extra { body[k] = v }
        return APIModel.json(body, status: status, headers: h)
    }
}
