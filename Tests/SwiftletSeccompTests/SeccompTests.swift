import Glibc
import SwiftletSeccomp
import Testing

/// Firecracker's x86_64 default filters, distinct syscalls per thread (the goal: fewer).
let firecrackerCounts = ["vmm": 50, "api": 31, "vcpu": 27]

@Suite struct SeccompAllowlistTests {
    @Test("every role's allowlist parses, names real syscalls with a reason each, and is smaller than Firecracker's (vcpu 27, vmm 50)")
    func allowlistsParse() throws {
        for role in SeccompRole.allCases {
            let rules = try role.allowlist()
            #expect(!rules.isEmpty)
            #expect(Set(rules.map(\.name)).count == rules.count, "\(role): a syscall listed twice")
            #expect(rules.allSatisfy { !$0.reason.isEmpty })
            // vCPU threads against Firecracker's vcpu filter; the rest (the
            // device loop, control, helpers) against its vmm thread's.
            let limit = role == .vcpu ? firecrackerCounts["vcpu"]! : firecrackerCounts["vmm"]!
            #expect(rules.count < limit, "\(role.rawValue): \(rules.count) syscalls")
            // Never an outright exec, open, fork or network socket.
            for forbidden in ["execve", "execveat", "open", "openat", "clone", "clone3", "fork", "vfork", "ptrace", "bind", "listen", "mount"] {
                #expect(!rules.contains { $0.name == forbidden }, "\(role.rawValue) allows \(forbidden)")
            }
            // Argument filters where the syscall is dangerous.
            for r in rules where ["ioctl", "socket", "mmap", "mprotect", "fcntl"].contains(r.name) {
                #expect(!r.anyOf.isEmpty, "\(role.rawValue): \(r.name) without an argument filter")
            }
        }
    }

    @Test("every thread Swiftlet starts has a role with an allowlist")
    func everyThreadHasARole() throws {
        let root = String(#filePath.split(separator: "/Tests/").first!)
        let names = try spawnedThreadNames(under: root + "/Sources")
        #expect(!names.isEmpty)
        for name in names {
            // `vcpu\(r.vcpu.id)`: an interpolated name stands for its prefix plus a number.
            let probe = name.split(separator: "\\", maxSplits: 1).first.map { name.contains("\\(") ? $0 + "0" : String($0) } ?? name
            #expect(SeccompRole(threadName: probe) != nil, "thread \(name) has no seccomp role")
        }
        #expect(SeccompRole(threadName: "main") == .control)
        #expect(SeccompRole(threadName: "vcpu12") == .vcpu)
        #expect(SeccompRole(threadName: "vcpux") == nil)
    }

    /// The literal names passed to `spawnThread(name: "...` in the sources.
    func spawnedThreadNames(under dir: String) throws -> [String] {
        var names: [String] = []
        let pipe = popen("grep -rhoE 'spawnThread\\(name: \"[^\"]*' '\(dir)'", "r")
        defer { pclose(pipe) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), pipe) != nil {
            let s = String(cString: line).trimmingCharacters()
            if let q = s.firstIndex(of: "\"") { names.append(String(s[s.index(after: q)...])) }
        }
        return names
    }
}

/// Each role's filter, installed by `swiftlet-seccomp-probe` (built beside the
/// tests), kills the whole process with SIGSYS on a forbidden syscall.
@Suite struct SeccompProbeTests {
    static let forbiddenEverywhere = ["execve", "open", "socket-inet", "ioctl-create-vm", "mmap-exec"]

    @Test("a forbidden syscall kills the process by SIGSYS; allowed ones run", arguments: SeccompRole.allCases)
    func forbiddenSyscallKills(role: SeccompRole) throws {
        for action in Self.forbiddenEverywhere {
            let r = try Probe.run(role: role.rawValue, action: action)
            #expect(r.signal == SIGSYS, "\(role.rawValue) \(action): \(r)")
        }
        let ok = try Probe.run(role: role.rawValue, action: "allowed")
        #expect(ok.signal == 0 && ok.status == 0, "\(role.rawValue) allowed: \(ok)")
        let heap = try Probe.run(role: role.rawValue, action: "mmap")
        #expect(heap.signal == 0 && heap.status == 0, "\(role.rawValue) mmap: \(heap)")
        // Filtered by request number: KVM_RUN only where the role runs vCPUs.
        let run = try Probe.run(role: role.rawValue, action: "ioctl-kvm-run")
        #expect(run.signal == (role == .vcpu ? 0 : SIGSYS), "\(role.rawValue) KVM_RUN: \(run)")
        // Unix sockets only where the vsock muxer connects out.
        let unix = try Probe.run(role: role.rawValue, action: "socket-unix")
        #expect(unix.signal == (role == .devices ? 0 : SIGSYS), "\(role.rawValue) socket(AF_UNIX): \(unix)")
    }

    /// A guest's write of 0 to the vsock device's status register resets the
    /// device on the vCPU thread that took the exit: the reset must stay
    /// inside the vcpu role (it used to close sockets and call epoll_ctl there:
    /// a job that unbound the vsock driver killed the VMM by SIGSYS).
    @Test("the vsock driver reset stays inside the vcpu role")
    func vsockResetOnVcpuThread() throws {
        let r = try Probe.run(role: SeccompRole.vcpu.rawValue, action: "vsock-reset")
        #expect(r.signal == 0 && r.status == 0, "\(r)")
        #expect(r.stdout.contains("alive rc=0"), "the connection was not dropped: \(r)")
    }

    /// A restored guest's memory is a private mapping of the snapshot's
    /// memory file: if the file is cut short while the guest runs, the VMM's
    /// next touch of a page not yet read in raises SIGBUS. Under the vcpu
    /// filter the guard ends the process with its one line and status, not a
    /// crash (the Swift runtime's backtracer, which SIGBUS used to reach, is
    /// itself killed by seccomp: status 159).
    @Test("SIGBUS on guest memory whose file was cut short: one line and the status asked for")
    func guestMemoryCutShort() throws {
        let r = try Probe.run(role: SeccompRole.vcpu.rawValue, action: "guest-memory-cut")
        #expect(r.signal == 0 && r.status == 125, "\(r)")
        #expect(r.stdout == "guest memory lost\n", "\(r)")
    }
}

enum Probe {
    struct Result: CustomStringConvertible {
        var status: Int32
        var signal: Int32
        var stdout: String
        var description: String { "status=\(status) signal=\(signal) stdout=\(stdout)" }
    }

    /// The directory of the test runner's build products (`.../debug`).
    static var productsDir: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        var dir = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        while let slash = dir.lastIndex(of: "/"), !dir.hasSuffix("/debug") && !dir.hasSuffix("/release") {
            dir = String(dir[..<slash])
        }
        return dir
    }

    static func run(role: String, action: String) throws -> Result {
        try spawn([productsDir + "/swiftlet-seccomp-probe", role, action])
    }

    static func spawn(_ argv: [String]) throws -> Result {
        var template = Array("/tmp/swiftlet-seccomp-out-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        close(fd)
        let out = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { unlink(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_TRUNC, 0)
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        try #require(rc == 0, "spawn \(argv[0]): \(rc)")
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signaled = (status & 0x7f) != 0 && (status & 0x7f) != 0x7f
        return Result(status: (status >> 8) & 0xff, signal: signaled ? status & 0x7f : 0, stdout: readText(out))
    }

    static func readText(_ path: String) -> String {
        guard let f = fopen(path, "r") else { return "" }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    func trimmingCharacters() -> String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}

@Suite struct BuiltFilterTests {
    /// The filters a VMM installs were compiled when Swiftlet was built
    /// (Filters.generated.swift). This holds that file to what libseccomp
    /// compiles from the allowlists now: an allowlist edited without
    /// regenerating the file fails here.
    @Test("Filters.generated.swift is what the allowlists compile to (regenerate: swift run swiftlet-seccomp-probe generate > Sources/SwiftletSeccomp/Filters.generated.swift)")
    func generatedFiltersAreCurrent() throws {
        let path = String(#filePath.split(separator: "/Tests/").first!) + "/Sources/SwiftletSeccomp/Filters.generated.swift"
        let committed = try #require(try? readWholeFile(path))
        let current = try Seccomp.generatedSource()
        #expect(committed == current)
        // Every role, in both filtering modes.
        for role in SeccompRole.allCases {
            #expect(committed.contains("case (.\(role), .strict):") && committed.contains("case (.\(role), .log):"), "\(role)")
        }
    }

    func readWholeFile(_ path: String) throws -> String {
        struct OpenFailed: Error { let path: String; let errno: Int32 }
        guard let f = fopen(path, "r") else { throw OpenFailed(path: path, errno: errno) }
        defer { fclose(f) }
        var bytes = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
