import Foundation

public enum JobState: String, Codable, CaseIterable, Sendable {
    case queued, running, succeeded, failed
    case timedOut = "timed_out"
    case cancelled

    public var isFinal: Bool { self != .queued && self != .running }
}

/// How the job came: a synchronous invoke (someone waits on the
/// connection; never retried, never resumed after a restart) or a queued job.
public enum Invocation: String, Codable, Sendable {
    case sync, async
}

/// One invocation of one function version, as stored.
public struct JobRecord: Equatable, Sendable {
    public var id: String
    public var function: String
    public var version: Int
    public var state: JobState
    public var invocation: Invocation
    public var attempts: Int
    public var maxAttempts: Int
    public var exitStatus: Int?
    public var error: String?
    public var idempotencyKey: String?
    public var createdAt: Double
    public var startedAt: Double?
    public var finishedAt: Double?
    /// Not to be started before this time (retry backoff).
    public var notBefore: Double
    public var outputBytes: Int
    public var logBytes: Int
    public var timings: JobTimings
    /// Insertion order: the listing's sort key and cursor.
    public var seq: Int64
}

/// Where a job's time went, in milliseconds; nil until known.
public struct JobTimings: Equatable, Sendable, Codable {
    /// From accepted to a VM slot granted (the last attempt's).
    public var queueMs: Double?
    /// From the slot to the guest ready to run the handler: process start
    /// and snapshot restore, or a warm VM's hand-over.
    public var restoreMs: Double?
    /// The handler's run, as the VMM saw it.
    public var runMs: Double?
    /// From accepted to final.
    public var totalMs: Double?

    public init(queueMs: Double? = nil, restoreMs: Double? = nil, runMs: Double? = nil, totalMs: Double? = nil) {
        (self.queueMs, self.restoreMs, self.runMs, self.totalMs) = (queueMs, restoreMs, runMs, totalMs)
    }
}

/// What one attempt's VMM ended with.
public enum AttemptOutcome: Equatable, Sendable {
    /// The handler exited: 0 is success, anything else a function error.
    case exited(Int32)
    /// A signal killed the handler (the VMM reported 128+N).
    case signalled(Int32)
    case timedOut
    /// Output went over the cap; the VMM was stopped.
    case outputTooLarge(limit: Int)
    case cancelled
    /// Swiftlet itself failed (status 125, or the VMM died): retryable.
    case infrastructure(String)
}

public enum JobID {
    /// 128 random bits as 32 hex digits.
    public static func make() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let s = String(g.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }.joined()
    }
}
