import Testing
@testable import SwiftletSandbox

@Suite("Agent protocol frames")
struct AgentProtocolTests {
    func frame(_ type: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var f: [UInt8] = []
        AgentProtocol.appendLE(UInt32(payload.count), to: &f)
        return f + [type, 0, 0, 0] + payload
    }

    func le32(_ v: UInt32) -> [UInt8] { var o: [UInt8] = []; AgentProtocol.appendLE(v, to: &o); return o }
    func le64(_ v: UInt64) -> [UInt8] { var o: [UInt8] = []; AgentProtocol.appendLE(v, to: &o); return o }

    func decodeAll(_ bytes: [UInt8], split: Int) throws -> [AgentMessage] {
        var r = AgentFrameReader()
        var out: [AgentMessage] = []
        var i = 0
        while i < bytes.count {
            let j = min(bytes.count, i + split)
            bytes[i..<j].withUnsafeBytes { r.feed($0) }
            while let m = try r.next() { out.append(m) }
            i = j
        }
        return out
    }

    @Test("JOB encodes flags, counts, seed and NUL-terminated strings")
    func jobLayout() {
        let job = AgentJob(argv: ["echo", "hi"], environment: ["A=1"], workingDirectory: "/tmp", stdinAttached: true, seed: [9, 8])
        let f = AgentProtocol.jobFrame(job)
        let payload = Array(f[8...])
        #expect(Array(f[0..<4]) == le32(UInt32(payload.count)))
        #expect(f[4] == 0x81 && f[5] == 0 && f[6] == 0 && f[7] == 0)
        #expect(Array(payload[0..<16]) == le32(1) + le32(2) + le32(1) + le32(2))
        #expect(Array(payload[16..<18]) == [9, 8])
        #expect(Array(payload[18...]) == Array("/tmp\0echo\0hi\0A=1\0".utf8))
    }

    @Test("JOB with credentials: flag bit 2, then uid, gid, the group count, zero and the groups, after the clock, before the seed")
    func jobCredentials() throws {
        let job = AgentJob(argv: ["id"], seed: [7], user: .init(uid: 1000, gid: 100, groups: [50, 60]))
        let payload = Array(AgentProtocol.jobFrame(job, wallClockNanos: 5)[8...])
        #expect(Array(payload[0..<16]) == le32(2 | 4) + le32(1) + le32(0) + le32(1))
        #expect(Array(payload[16..<24]) == le64(5))
        #expect(Array(payload[24..<48]) == le32(1000) + le32(100) + le32(2) + le32(0) + le32(50) + le32(60))
        #expect(Array(payload[48...]) == [7] + Array("\0id\0".utf8))
        let tooMany = AgentJob(argv: ["id"], user: .init(uid: 1, gid: 1, groups: Array(0..<65)))
        #expect(throws: SandboxError.self) { try tooMany.validate() }
    }

    @Test("messages decode whole and split at every byte boundary", arguments: [1, 3, 7, 1000])
    func decodeSplit(split: Int) throws {
        var stream: [UInt8] = []
        stream += frame(0x01, le32(1) + le32(0) + le64(111) + le64(222))
        stream += frame(0x04, le32(77) + le32(0) + le64(333))
        stream += frame(0x02, Array("out".utf8))
        stream += frame(0x03, [0, 255])
        stream += frame(0x7f, [1, 2, 3]) // unknown: skipped by the session
        stream += frame(0x02, [])
        stream += frame(0x05, le32(1) + le32(9) + le64(444))
        let messages = try decodeAll(stream, split: split)
        #expect(messages == [
            .hello(version: 1, startedNanos: 111, connectedNanos: 222),
            .started(pid: 77, nanos: 333),
            .stdout(Array("out".utf8)),
            .stderr([0, 255]),
            .unknown(0x7f),
            .stdout([]),
            .exit(.signaled(9), nanos: 444),
        ])
    }

    @Test("oversized, short and malformed frames are protocol errors")
    func hostileFrames() {
        var huge: [UInt8] = le32(UInt32(AgentProtocol.maxPayload + 1)) + [0x02, 0, 0, 0]
        huge += [0]
        #expect(throws: SandboxError.self) { _ = try decodeAll(huge, split: 64) }
        #expect(throws: SandboxError.self) { _ = try decodeAll(frame(0x01, [1, 0, 0]), split: 64) }
        #expect(throws: SandboxError.self) { _ = try decodeAll(frame(0x05, le32(7) + le32(0) + le64(0)), split: 64) }
    }

    @Test("EXIT values a guest could forge are protocol errors, never a status: a signal outside 1-64, a code over 255",
          arguments: [(1, 0), (1, 65), (1, 128), (1, 0xffff_ffff), (0, 256), (0, 0xffff_ffff)] as [(UInt32, UInt32)])
    func forgedExit(kind: UInt32, value: UInt32) {
        #expect(throws: SandboxError.self) { _ = try decodeAll(frame(0x05, le32(kind) + le32(value) + le64(0)), split: 64) }
    }

    @Test("the edges of EXIT's ranges decode")
    func exitEdges() throws {
        let m = try decodeAll(frame(0x05, le32(1) + le32(64) + le64(0)) + frame(0x05, le32(0) + le32(255) + le64(0)), split: 64)
        #expect(m == [.exit(.signaled(64), nanos: 0), .exit(.exited(255), nanos: 0)])
        #expect(JobStatus.signaled(64).shellStatus == 192)
    }

    @Test("CLOSE_OUTPUT names the stream")
    func closeOutputFrame() {
        #expect(AgentProtocol.closeOutputFrame(.stdout) == frame(0x85, le32(1)))
        #expect(AgentProtocol.closeOutputFrame(.stderr) == frame(0x85, le32(2)))
    }

    @Test("exit statuses map to the shell's convention")
    func shellStatus() {
        #expect(JobStatus.exited(0).shellStatus == 0)
        #expect(JobStatus.exited(42).shellStatus == 42)
        #expect(JobStatus.signaled(9).shellStatus == 137)
    }

    @Test("bad jobs are refused before anything boots")
    func validation() {
        #expect(throws: SandboxError.self) { try AgentJob(argv: []).validate() }
        #expect(throws: SandboxError.self) { try AgentJob(argv: ["a\0b"]).validate() }
        #expect(throws: SandboxError.self) { try AgentJob(argv: ["x"], environment: ["NOEQUALS"]).validate() }
        #expect(throws: SandboxError.self) { try AgentJob(argv: ["x"], environment: ["=v"]).validate() }
        #expect(throws: Never.self) { try AgentJob(argv: ["x"], environment: ["K=v=w"]).validate() }
    }
}
