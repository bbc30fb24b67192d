import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import SwiftletRunner

/// The API's JSON shapes (docs: Sources/swiftletd/openapi.yaml). Absent
/// values are JSON null, never missing keys.
enum APIModel {
    static func function(_ f: FunctionRecord) -> [String: Any] {
        [
            "name": f.name, "version": f.version, "command": f.spec.command, "image": f.spec.image,
            "imageSha256": f.imageSha256, "env": f.spec.env, "workdir": f.spec.workdir ?? NSNull(),
            "user": f.spec.user ?? NSNull(), "memoryMiB": f.spec.memoryMiB, "vcpus": f.spec.vcpus, "timeoutSeconds": f.spec.timeoutSeconds,
            "concurrency": f.spec.concurrency, "warm": f.spec.warm, "retries": f.spec.retries,
            "createdAt": timestamp(f.createdAt.timeIntervalSince1970), "updatedAt": timestamp(f.updatedAt.timeIntervalSince1970),
        ]
    }

    static func job(_ j: JobRecord) -> [String: Any] {
        func orNull<T>(_ v: T?) -> Any { v.map { $0 as Any } ?? NSNull() }
        return [
            "id": j.id, "function": j.function, "version": j.version, "state": j.state.rawValue,
            "invocation": j.invocation.rawValue, "attempts": j.attempts, "maxAttempts": j.maxAttempts,
            "exitStatus": orNull(j.exitStatus), "error": orNull(j.error), "idempotencyKey": orNull(j.idempotencyKey),
            "createdAt": timestamp(j.createdAt), "startedAt": orNull(j.startedAt.map(timestamp)),
            "finishedAt": orNull(j.finishedAt.map(timestamp)), "outputBytes": j.outputBytes, "logBytes": j.logBytes,
            "timings": [
                "queueMs": orNull(j.timings.queueMs.map(round3)), "restoreMs": orNull(j.timings.restoreMs.map(round3)),
                "runMs": orNull(j.timings.runMs.map(round3)), "totalMs": orNull(j.timings.totalMs.map(round3)),
            ],
        ]
    }

    static func host(_ h: HostRecord) -> [String: Any] {
        [
            "id": h.id, "alive": h.alive, "slots": h.capacity.slots, "memoryMiB": h.capacity.memoryMiB, "running": h.capacity.running,
            "images": h.capacity.images, "address": h.capacity.address, "startedAt": timestamp(h.startedAt),
            "heartbeatAt": timestamp(h.heartbeatAt), "silentSeconds": round3(h.silentSeconds),
        ]
    }

    static func round3(_ v: Double) -> Double { (v * 1000).rounded() / 1000 }

    static func timestamp(_ seconds: Double) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date(timeIntervalSince1970: seconds))
    }

    static func json(_ object: Any, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func bytes(_ body: [UInt8], contentType: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[.contentType] = contentType
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// The native API's error: `{"error": {"code", "message"}}`.
    static func error(_ status: HTTPResponse.Status, _ code: String, _ message: String, headers: HTTPFields = [:]) -> Response {
        json(["error": ["code": code, "message": message]], status: status, headers: headers)
    }

    static func error(_ e: RunnerError) -> Response {
        switch e {
        case .badRequest: return error(.badRequest, "bad_request", e.description)
        case .functionNotFound, .jobNotFound: return error(.notFound, "not_found", e.description)
        case .alreadyFinal: return error(.conflict, "conflict", e.description)
        case .payloadTooLarge: return error(.contentTooLarge, "payload_too_large", e.description)
        case let .tooManyRequests(_, retry):
            return error(.tooManyRequests, "too_many_requests", e.description, headers: [.retryAfter: String(retry)])
        case .draining: return error(.serviceUnavailable, "unavailable", e.description, headers: [.retryAfter: "5"])
        case .internalFailure: return error(.internalServerError, "internal", e.description)
        case .storeUnavailable: return error(.serviceUnavailable, "unavailable", e.description, headers: [.retryAfter: "2"])
        }
    }
}
