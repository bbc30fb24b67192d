// swiftlet-seccomp-probe ROLE ACTION: installs ROLE's strict filter on this
// thread, then does ACTION. (`swiftlet-seccomp-probe generate` prints
// Filters.generated.swift instead.) The seccomp tests expect death by SIGSYS for the
// forbidden actions and exit 0 (after printing "alive") for the allowed ones.
// A separate test executable, so that the `swiftlet` binary has no test hook.
import CSeccomp
import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletSeccomp
import SwiftletSys
import SwiftletVirtio

func say(_ s: String, fd: Int32 = 1) {
    let b = Array((s + "\n").utf8)
    _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

let args = CommandLine.arguments
// `generate`: prints Filters.generated.swift (the filters compiled at build time).
if args.count == 2 && args[1] == "generate" {
    do throws(SeccompError) {
        let source = try Seccomp.generatedSource()
        _ = Array(source.utf8).withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        exit(0)
    } catch {
        say("swiftlet-seccomp-probe: \(error)", fd: 2)
        exit(1)
    }
}
guard args.count == 3, let role = SeccompRole(rawValue: args[1]) else {
    say("usage: swiftlet-seccomp-probe ROLE ACTION (roles: \(SeccompRole.allCases.map(\.rawValue).joined(separator: " ")))", fd: 2)
    exit(2)
}
let action = args[2]
_ = swl_set_rlimit(2, 0, 0) // no core file from the expected SIGSYS
let path = "/tmp/swiftlet-seccomp-probe-\(getpid())"
// Only roles that may write say "alive" (memslots may not).
let canWrite = (try? role.allowlist())?.contains { $0.name == "write" } ?? false
// vsock-reset: the virtio-vsock driver's reset, which a vCPU thread runs,
// on a muxer holding a live host connection (set up before the filter).
var muxer: VsockMuxer?
var client: OwnedFD?
if action == "vsock-reset" {
    do {
        let m = try VsockMuxer(guestCID: 3, udsPath: "@swiftlet-seccomp-probe-\(getpid())")
        client = try UnixSocket.connect(to: m.udsPath)
        m.process()
        guard m.statistics.connections == 1 else { say("no connection", fd: 2); exit(3) }
        muxer = m
    } catch {
        say("swiftlet-seccomp-probe: \(error)", fd: 2)
        exit(3)
    }
}
// guest-memory-cut: guest memory mapped from a file (as a snapshot's is),
// guarded, then the file cut to nothing; the action touches a page that
// was never read in. The guard's line goes to stdout (stderr is made a copy).
var guarded: GuestMemory?
if action == "guest-memory-cut" {
    let file = "/tmp/swiftlet-seccomp-probe-memory-\(getpid())"
    let fd = open(file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    unlink(file)
    guard fd >= 0, ftruncate(fd, 2 << 20) == 0,
          let memory = try? GuestMemory(privateMappingOf: fd, ranges: [(base: 0, size: 2 << 20)]) else { exit(3) }
    var starts = memory.regions.map { UnsafeMutableRawPointer?($0.host) }
    var sizes = memory.regions.map(\.size)
    dup2(1, 2)
    guard swl_sigbus_guard(&starts, &sizes, 1, "guest memory lost\n", 125) == 0, ftruncate(fd, 0) == 0 else { exit(3) }
    close(fd)
    guarded = memory
}
do {
    try Seccomp.install(role: role, mode: .strict)
} catch {
    say("swiftlet-seccomp-probe: \(error)", fd: 2)
    exit(3)
}


var rc: Int = 0
switch action {
case "allowed":
    rc = 0 // write and exit_group below: every role allows them
case "execve":
    var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
    rc = Int(execv("/bin/true", &argv))
case "open":
    rc = Int(open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600))
    unlink(path)
case "socket-inet":
    rc = Int(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
case "socket-unix":
    rc = Int(socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
case "ioctl-create-vm":
    rc = Int(ioctl(0, SWL_KVM_CREATE_VM, 0))
case "ioctl-kvm-run":
    rc = Int(ioctl(0, SWL_KVM_RUN, 0))
case "mmap-exec":
    let p = mmap(nil, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    rc = p == MAP_FAILED ? -1 : 0
case "mmap":
    let p = mmap(nil, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    rc = p == MAP_FAILED ? -1 : 0
case "guest-memory-cut":
    let value: UInt64? = try? guarded?.load(UInt64.self, at: 1 << 20)
    rc = Int(value ?? 0)
case "vsock-reset":
    muxer?.reset()
    rc = muxer?.statistics.connections ?? -1
default:
    say("unknown action \(action)")
    exit(2)
}
if canWrite { say("alive rc=\(rc)") }
exit(rc < 0 && action == "mmap" ? 4 : 0)
