/// The host side of the guest agent's wire protocol (rootfs/agent/PROTOCOL.md):
/// length-prefixed frames over one vsock stream.
public enum AgentProtocol {
    /// The protocol version the agent announces in HELLO.
    public static let version: UInt32 = 1
    /// The vsock port the agent connects to on the host (CID 2).
    public static let port: UInt32 = 52
    /// Frame header: u32 payload length, u8 type, 3 zero bytes.
    public static let headerSize = 8
    /// No frame may carry more; a longer one is a protocol error.
    public static let maxPayload = 1 << 20
    /// Largest STDIN chunk the host sends.
    public static let maxChunk = 64 << 10
    /// Most seed bytes a JOB may carry.
    public static let maxSeed = 512
    /// Supplementary groups a JOB may carry.
    public static let maxGroups = 64

    /// Frame types.
    public enum Kind: UInt8, Sendable {
        // Guest to host.
        case hello = 0x01, stdout = 0x02, stderr = 0x03, started = 0x04, exit = 0x05, error = 0x06, ready = 0x07, parked = 0x08
        // Host to guest.
        case job = 0x81, stdin = 0x82, signal = 0x83, park = 0x84, closeOutput = 0x85
    }

    /// CLOSE_OUTPUT's payload: which of the job's streams the host's reader closed.
    public enum OutputStream: UInt32, Sendable {
        case stdout = 1, stderr = 2
    }

    /// The CLOSE_OUTPUT frame: nobody reads `stream` on the host any more, so
    /// the agent closes its end of the job's pipe and the job's next write
    /// gets SIGPIPE, as in a local pipeline.
    public static func closeOutputFrame(_ stream: OutputStream) -> [UInt8] {
        var p: [UInt8] = []
        appendLE(stream.rawValue, to: &p)
        var frame: [UInt8] = []
        appendFrame(.closeOutput, p, to: &frame)
        return frame
    }

    /// Appends one frame to `out`.
    public static func appendFrame(_ kind: Kind, _ payload: some Collection<UInt8>, to out: inout [UInt8]) {
        appendLE(UInt32(payload.count), to: &out)
        out.append(kind.rawValue)
        out.append(contentsOf: [0, 0, 0])
        out.append(contentsOf: payload)
    }

    /// JOB flags.
    public enum JobFlag {
        public static let stdinAttached: UInt32 = 1
        /// A u64 CLOCK_REALTIME (ns) follows the fixed fields: the guest sets its clock.
        public static let wallClock: UInt32 = 2
        /// uid, gid, the group count, zero, then the groups follow (after the clock): the job runs as that user.
        public static let credentials: UInt32 = 4
    }

    /// The JOB frame for `job`; with `wallClockNanos` the guest sets its
    /// wall clock first (a restored guest's is the snapshot's).
    public static func jobFrame(_ job: AgentJob, wallClockNanos: UInt64? = nil) -> [UInt8] {
        var p: [UInt8] = []
        appendLE((job.stdinAttached ? JobFlag.stdinAttached : 0) | (wallClockNanos == nil ? 0 : JobFlag.wallClock)
                     | (job.user == nil ? 0 : JobFlag.credentials), to: &p)
        appendLE(UInt32(job.argv.count), to: &p)
        appendLE(UInt32(job.environment.count), to: &p)
        appendLE(UInt32(job.seed.count), to: &p)
        if let t = wallClockNanos { appendLE(t, to: &p) }
        if let user = job.user {
            appendLE(user.uid, to: &p)
            appendLE(user.gid, to: &p)
            appendLE(UInt32(user.groups.count), to: &p)
            appendLE(UInt32(0), to: &p)
            for g in user.groups { appendLE(g, to: &p) }
        }
        p += job.seed
        appendStrings([job.workingDirectory] + job.argv + job.environment, to: &p)
        var frame: [UInt8] = []
        appendFrame(.job, p, to: &frame)
        return frame
    }

    /// The PARK frame: run each of `warmUp` (absolute paths) once, then answer PARKED.
    public static func parkFrame(warmUp: [String]) -> [UInt8] {
        var p: [UInt8] = []
        appendStrings(warmUp, to: &p)
        var frame: [UInt8] = []
        appendFrame(.park, p, to: &frame)
        return frame
    }

    /// Appends each string NUL-terminated, as JOB and PARK carry them.
    static func appendStrings(_ strings: [String], to out: inout [UInt8]) {
        for s in strings {
            out += s.utf8
            out.append(0)
        }
    }

    static func appendLE<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }
}

/// One job for the agent.
public struct AgentJob: Sendable, Equatable {
    /// The command and its arguments; argv[0] without a `/` is looked up in PATH.
    public var argv: [String]
    /// `KEY=VALUE` strings; the agent adds PATH and HOME when missing.
    public var environment: [String]
    /// Where the command starts ("" means `/`).
    public var workingDirectory: String
    /// Whether STDIN frames follow (else the job's stdin is /dev/null).
    public var stdinAttached: Bool
    /// Host entropy for the guest's RNG.
    public var seed: [UInt8]
    /// Who the command runs as; nil: root.
    public var user: Credentials?

    /// A numeric user, its primary group and its supplementary groups (resolved by the host).
    public struct Credentials: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var groups: [UInt32]
        public init(uid: UInt32, gid: UInt32, groups: [UInt32] = []) { (self.uid, self.gid, self.groups) = (uid, gid, groups) }
    }

    public init(argv: [String], environment: [String] = [], workingDirectory: String = "", stdinAttached: Bool = false, seed: [UInt8] = [],
                user: Credentials? = nil) {
        self.user = user
        self.argv = argv
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.stdinAttached = stdinAttached
        self.seed = seed
    }

    /// Why a job cannot be sent: strings with NUL bytes cannot cross the wire.
    public func validate() throws(SandboxError) {
        guard !argv.isEmpty else { throw .usage("no command given") }
        for s in argv where s.utf8.contains(0) { throw .usage("argument contains a NUL byte") }
        for e in environment {
            guard let eq = e.firstIndex(of: "="), eq != e.startIndex, !e.utf8.contains(0) else {
                throw .usage("--env '\(e)' is not KEY=VALUE")
            }
        }
        guard !workingDirectory.utf8.contains(0) else { throw .usage("--workdir contains a NUL byte") }
        guard seed.count <= AgentProtocol.maxSeed else { throw .usage("seed too long") }
        if let user, user.groups.count > AgentProtocol.maxGroups { throw .usage("more than \(AgentProtocol.maxGroups) supplementary groups") }
        guard AgentProtocol.jobFrame(self).count - AgentProtocol.headerSize <= AgentProtocol.maxPayload else {
            throw .usage("command line and environment exceed \(AgentProtocol.maxPayload) bytes")
        }
    }
}

/// How the job ended.
public enum JobStatus: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)

    /// The shell convention: the code, or 128+N for signal N.
    public var shellStatus: Int32 {
        switch self {
        case let .exited(c): return c & 0xff
        case let .signaled(s): return 128 + s
        }
    }
}

/// A decoded guest-to-host message.
public enum AgentMessage: Sendable, Equatable {
    /// The agent is up: its start and connect times (guest CLOCK_MONOTONIC ns).
    case hello(version: UInt32, startedNanos: UInt64, connectedNanos: UInt64)
    /// Job output; an empty chunk is EOF.
    case stdout([UInt8])
    case stderr([UInt8])
    /// The job was forked.
    case started(pid: UInt32, nanos: UInt64)
    /// The job ended.
    case exit(JobStatus, nanos: UInt64)
    /// The agent could not run the job.
    case error(String)
    /// The agent is idle, waiting for its job.
    case ready
    /// The agent ran the PARK frame's warm-up programs and waits for its job:
    /// the point `swiftlet snapshot create` pauses the machine at.
    case parked(nanos: UInt64)
    /// A type this host does not know: skipped.
    case unknown(UInt8)
}

/// Splits a byte stream into frames and decodes them.
public struct AgentFrameReader: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    public init() {}

    /// Adds received bytes.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete message, nil when more bytes are needed.
    /// Throws on a frame that breaks the protocol.
    public mutating func next() throws(SandboxError) -> AgentMessage? {
        let avail = buffer.count - start
        guard avail >= AgentProtocol.headerSize else { return nil }
        let length = Int(le32(start))
        guard length <= AgentProtocol.maxPayload else {
            throw .protocolViolation("frame of \(length) bytes from the agent")
        }
        guard avail >= AgentProtocol.headerSize + length else { return nil }
        let type = buffer[start + 4]
        let p = start + AgentProtocol.headerSize
        start = p + length
        if start == buffer.count {
            defer { buffer.removeAll(keepingCapacity: true); start = 0 }
            return try decode(type, p, length)
        }
        // Compact now and then so the buffer does not grow with the stream.
        defer { if start > 1 << 20 { buffer.removeFirst(start); start = 0 } }
        return try decode(type, p, length)
    }

    private func le32(_ at: Int) -> UInt32 {
        UInt32(buffer[at]) | UInt32(buffer[at + 1]) << 8 | UInt32(buffer[at + 2]) << 16 | UInt32(buffer[at + 3]) << 24
    }

    private func le64(_ at: Int) -> UInt64 { UInt64(le32(at)) | UInt64(le32(at + 4)) << 32 }

    private func decode(_ type: UInt8, _ p: Int, _ length: Int) throws(SandboxError) -> AgentMessage {
        func need(_ n: Int) throws(SandboxError) {
            guard length >= n else { throw .protocolViolation("short frame of type \(type) from the agent") }
        }
        switch AgentProtocol.Kind(rawValue: type) {
        case .hello:
            try need(24)
            return .hello(version: le32(p), startedNanos: le64(p + 8), connectedNanos: le64(p + 16))
        case .stdout: return .stdout(Array(buffer[p..<p + length]))
        case .stderr: return .stderr(Array(buffer[p..<p + length]))
        case .started:
            try need(16)
            return .started(pid: le32(p), nanos: le64(p + 8))
        case .exit:
            try need(16)
            // Checked before any arithmetic: a forged signal 128 would
            // otherwise become status 128+128, which exit() turns into 0.
            let value = le32(p + 4)
            switch le32(p) {
            case 0:
                guard value <= 255 else { throw .protocolViolation("exit code \(value) from the agent") }
                return .exit(.exited(Int32(value)), nanos: le64(p + 8))
            case 1:
                guard (1...64).contains(value) else { throw .protocolViolation("exit signal \(value) from the agent") }
                return .exit(.signaled(Int32(value)), nanos: le64(p + 8))
            default: throw .protocolViolation("unknown exit kind \(le32(p)) from the agent")
            }
        case .error: return .error(String(decoding: buffer[p..<p + length], as: UTF8.self))
        case .ready: return .ready
        case .parked:
            try need(8)
            return .parked(nanos: le64(p))
        default: return .unknown(type)
        }
    }
}
