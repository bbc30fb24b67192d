/// The runner's errors, each one HTTP status away from a response. The
/// HTTP layer maps them (native JSON, or Lambda's `__type` shape); nothing
/// here knows about HTTP.
public enum RunnerError: Error, Equatable, Sendable {
    /// The request is malformed or breaks a limit.
    case badRequest(String)
    case functionNotFound(String)
    case jobNotFound(String)
    /// The job is already final, so it cannot be cancelled.
    case alreadyFinal(id: String, state: JobState)
    /// A payload over the limit of its invocation type.
    case payloadTooLarge(limit: Int)
    /// No slot within the wait (sync), or the queue is full (async).
    case tooManyRequests(reason: TooManyReason, retryAfterSeconds: Int)
    /// The daemon is shutting down.
    case draining
    /// The store or the host failed: the operation's name and errno or SQLite's words.
    case internalFailure(String)
    /// The database cannot be reached now (a PostgreSQL outage): retry later.
    case storeUnavailable(String)

    public enum TooManyReason: Sendable {
        /// Every VM slot (or the memory budget) was taken for the whole wait.
        case concurrentInvocationLimitExceeded
        /// The function's own concurrency limit was reached for the whole wait.
        case functionConcurrencyLimitExceeded
        /// `--max-queued` jobs are already waiting.
        case queueFull

        /// Lambda's `Reason`. It has none of its own for a full queue: that
        /// one says what clients should do, back off and retry.
        public var lambdaReason: String {
            switch self {
            case .concurrentInvocationLimitExceeded, .queueFull: return "ConcurrentInvocationLimitExceeded"
            case .functionConcurrencyLimitExceeded: return "ReservedFunctionConcurrentInvocationLimitExceeded"
            }
        }
    }
}

extension RunnerError: CustomStringConvertible {
    public var description: String {
        switch self {
        case let .badRequest(m): return m
        case let .functionNotFound(n): return "function '\(n)' not found"
        case let .jobNotFound(id): return "job '\(id)' not found"
        case let .alreadyFinal(id, state): return "job '\(id)' is already \(state.rawValue)"
        case let .payloadTooLarge(limit): return "the payload is over \(limit) bytes"
        case let .tooManyRequests(reason, _):
            switch reason {
            case .concurrentInvocationLimitExceeded: return "every VM slot is busy; retry later"
            case .functionConcurrencyLimitExceeded: return "the function is at its concurrency limit; retry later"
            case .queueFull: return "the job queue is full; retry later"
            }
        case .draining: return "the runner is shutting down"
        case let .internalFailure(m): return m
        case let .storeUnavailable(m): return "the database is unavailable: \(m)"
        }
    }
}
