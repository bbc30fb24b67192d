import Glibc
import Testing
import SwiftletTestSupport

/// Another local process, of this user or another, races a `run` to its
/// abstract sockets (listed in the world-readable /proc/net/unix; abstract
/// names have no permission check): the agent listener `@swiftlet-PID-X_52`,
/// where it poses as the guest agent with a forged EXIT 42, and the vsock
/// listener `@swiftlet-PID-X`, where it asks for a guest port. Both are
/// refused (SO_PEERCRED: only this process's own vsock device is admitted)
/// before a byte is sent, and the run is unaffected. Before the check, the
/// first connection to the agent listener got the JOB frame (argv,
/// environment, stdin) and decided the run's output and status.
@Suite(.serialized, .enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct PeerCheckTests {
    static let rogue = String(#filePath).split(separator: "/").dropLast(2).reduce("") { $0 + "/" + $1 } + "/security/rogue-peer.py"

    struct RogueReport {
        var agentConnections = 0, vsockConnections = 0, agentBytes = 0, vsockBytes = 0
        init(_ json: String) {
            // The one-line JSON object of numbers that rogue-peer.py prints.
            func field(_ name: String) -> Int {
                let key = "\"\(name)\": "
                guard let part = json.split(separator: ",").first(where: { $0.contains(key) }),
                      let value = part.split(separator: ":").last else { return -1 }
                return Int(value.filter(\.isNumber)) ?? -1
            }
            (agentConnections, vsockConnections) = (field("agent_connections"), field("vsock_connections"))
            (agentBytes, vsockBytes) = (field("agent_bytes"), field("vsock_bytes"))
        }
    }

    @Test("a process of this user and one of another user connect first: both refused, the run unaffected")
    func foreignPeersAreRefused() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        try #require(access(Self.rogue, X_OK) == 0, Comment(rawValue: Self.rogue))
        // Cold: the agent connects only after the boot, so the rogues are first.
        let run = try CLI.start(["run", "--cold", "--", "sh", "-c", "echo real; exit 3"])
        var rogues: [CLI.Running] = []
        for user in [[], ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]] {
            let out = try CLI.tempFile("rogue"), err = try CLI.tempFile("rogue-err")
            rogues.append(CLI.Running(pid: try CLI.spawn(user + ["/usr/bin/python3", Self.rogue, String(run.pid), "600"], stdout: out, stderr: err),
                                      stdoutPath: out, stderrPath: err))
        }
        let r = try run.wait(seconds: 600)
        #expect(r.status == 3, "stderr: \(r.stderr)")
        #expect(r.stdout == "real\n", "stderr: \(r.stderr)")
        for (i, rogue) in rogues.enumerated() {
            let out = try rogue.wait(seconds: 30)
            let report = RogueReport(out.stdout)
            let who = i == 0 ? "same user" : "user nobody"
            #expect(report.agentConnections > 0 && report.vsockConnections > 0, "\(who) never got to connect: \(out.stdout) \(out.stderr)")
            #expect(report.agentBytes == 0, "\(who) read the JOB: \(out.stdout)")
            #expect(report.vsockBytes == 0, "\(who) reached a guest port: \(out.stdout)")
        }
    }
}
