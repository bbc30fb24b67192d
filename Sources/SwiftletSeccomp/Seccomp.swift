import CSeccomp
import Glibc
import SwiftletSys

/// `--seccomp`: what a syscall outside a thread's allowlist does.
public enum SeccompMode: String, Sendable, CaseIterable {
    /// The whole process is killed (SECCOMP_RET_KILL_PROCESS): the VM never runs half-dead.
    case strict
    /// The syscall runs and the kernel logs it (SECCOMP_RET_LOG, an audit
    /// record naming the thread); Swiftlet reads those records back at the
    /// end and prints each violation by role and syscall name.
    case log
    /// No filters (debugging only; a warning is printed).
    case off
}

public enum SeccompError: Error, CustomStringConvertible {
    case allowlist(AllowlistError)
    case libseccomp(String, Int32)

    public var description: String {
        switch self {
        case let .allowlist(e): "seccomp allowlist \(e)"
        case let .libseccomp(what, rc): "seccomp: \(what) failed: \(String(cString: strerror(-rc)))"
        }
    }
}

public enum Seccomp {
    /// Installs `rules` as a filter on the calling thread (no_new_privs set first).
    public static func install(_ rules: [SeccompRule], mode: SeccompMode) throws(SeccompError) {
        guard mode != .off else { return }
        try install(program: try compile(rules, mode: mode))
    }

    /// Compiles `rules` to a BPF program, to install later with `install(program:)`.
    static func compile(_ rules: [SeccompRule], mode: SeccompMode) throws(SeccompError) -> [UInt8] {
        guard let ctx = swl_scmp_new(mode == .strict ? SWL_SCMP_ACT_KILL_PROCESS : SWL_SCMP_ACT_LOG) else {
            throw .libseccomp("seccomp_init", -ENOMEM)
        }
        defer { swl_scmp_release(ctx) }
        for rule in rules {
            if rule.anyOf.isEmpty {
                let rc = swl_scmp_allow(ctx, rule.number, -1, 0, 0)
                guard rc == 0 else { throw .libseccomp("allow \(rule.name)", rc) }
            }
            for c in rule.anyOf {
                let rc = swl_scmp_allow(ctx, rule.number, c.index, c.mask, c.value)
                guard rc == 0 else { throw .libseccomp("allow \(rule.name)", rc) }
            }
        }
        var prog: UnsafeMutableRawPointer?
        var len = 0
        let rc = swl_scmp_compile(ctx, &prog, &len)
        guard rc == 0, let prog else { throw .libseccomp("seccomp_export_bpf", rc == 0 ? -ENOMEM : rc) }
        defer { free(prog) }
        return Array(UnsafeRawBufferPointer(start: prog, count: len))
    }

    /// Installs a compiled program in the calling thread (with no_new_privs).
    static func install(program: [UInt8]) throws(SeccompError) {
        let rc = program.withUnsafeBytes { swl_seccomp_install($0.baseAddress, $0.count) }
        guard rc == 0 else { throw .libseccomp("seccomp(SET_MODE_FILTER)", rc) }
    }

    public static func install(role: SeccompRole, mode: SeccompMode) throws(SeccompError) {
        let rules: [SeccompRule]
        do { rules = try role.allowlist() } catch { throw .allowlist(error) }
        try install(rules, mode: mode)
    }

    /// The rules for a thread name with no role of its own: the union of every
    /// role (still filtered, so no thread escapes), with a warning.
    static func unionOfRoles() throws(SeccompError) -> [SeccompRule] {
        var all: [SeccompRule] = []
        for role in SeccompRole.allCases {
            let rules: [SeccompRule]
            do { rules = try role.allowlist() } catch { throw .allowlist(error) }
            for r in rules {
                if let i = all.firstIndex(where: { $0.name == r.name }) {
                    if all[i].anyOf.isEmpty || r.anyOf.isEmpty { all[i].anyOf = [] } else { all[i].anyOf += r.anyOf }
                } else {
                    all.append(r)
                }
            }
        }
        return all
    }

    nonisolated(unsafe) private static var kmsgFD: Int32 = -1
    /// `SWIFTLET_SECCOMP_LOG_FILE`: log mode appends its report there too
    /// (opened before any filter), so a whole test suite's runs can be collected.
    nonisolated(unsafe) private static var reportFD: Int32 = -1

    /// The default `--seccomp` mode: `SWIFTLET_SECCOMP` when set (the
    /// maintainer's guide runs the test suite under `log` this way), else strict.
    public static var defaultModeName: String {
        getenv("SWIFTLET_SECCOMP").map { String(cString: $0) } ?? "strict"
    }

    /// The first step of `enable`, alone: one malloc arena, inherited
    /// descriptors closed, no core dumps; no thread started. Once per
    /// process: `--jail` calls it before it forks (the jailed child keeps a
    /// descriptor to its supervisor, which `enable` must not close then).
    /// `keeping`: inherited descriptors the caller was handed on purpose
    /// (`run --start-fd`, `--report-fd`); every other one above 2 is closed.
    public static func prepareProcess(keeping: [Int32] = []) {
        guard !prepared else { return }
        prepared = true
        // Before any thread exists: one malloc arena, so that no allocator
        // path on a filtered thread opens a file (the audit is in runtime.swift).
        _ = swl_malloc_single_arena()
        var next: UInt32 = 3
        for fd in Set(keeping.filter { $0 >= 3 }).sorted() {
            _ = swl_close_range(next, UInt32(fd) - 1)
            next = UInt32(fd) + 1
        }
        _ = swl_close_from(Int32(next))
        _ = swl_set_rlimit(2, 0, 0) // RLIMIT_CORE: no core dumps of guest memory
    }
    nonisolated(unsafe) private static var prepared = false

    /// Sandboxes the CLI's VMM process: closes inherited descriptors and turns
    /// off core dumps now; from then on every thread `spawnThread` starts
    /// drops its capabilities and installs its role's filter first, and the
    /// main thread does the same (plus the resource limits) just before the
    /// vCPUs enter the guest. Call once, at the start, before opening anything.
    public static func enable(mode: SeccompMode) {
        prepareProcess()
        if mode == .off {
            printStderr("swiftlet: warning: --seccomp=off: the VMM runs without syscall filters")
            ThreadSandbox.threadStart = { _ in _ = swl_drop_capabilities() }
            ThreadSandbox.guestStart = { hardenProcess() }
            return
        }
        if mode == .log {
            kmsgFD = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
            if let path = getenv("SWIFTLET_SECCOMP_LOG_FILE") {
                reportFD = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            }
            if kmsgFD >= 0 {
                lseek(kmsgFD, 0, SEEK_END)
            } else {
                printStderr("swiftlet: warning: --seccomp=log cannot read /dev/kmsg; violations are only in the kernel log")
            }
        }
        // Every role's program is compiled now, on a helper thread, while the
        // machine is built: a thread then only installs it (compiling them on
        // the threads that start the guest cost about 1.4 ms of start-up).
        let compiled = CompiledFilters(mode: mode)
        ThreadSandbox.threadStart = { name in
            _ = swl_drop_capabilities()
            do throws(SeccompError) {
                if let role = SeccompRole(threadName: name) {
                    try install(program: try compiled.program(role))
                } else {
                    printStderr("swiftlet: warning: seccomp: thread '\(name)' has no allowlist; it gets every role's")
                    try install(try unionOfRoles(), mode: mode)
                }
            } catch {
                fail("thread \(name): \(error)")
            }
        }
        ThreadSandbox.guestStart = {
            hardenProcess()
            do throws(SeccompError) { try install(program: try compiled.program(.control)) } catch { fail("main thread: \(error)") }
        }
    }

    /// The process-wide limits once every thread exists, and the main
    /// thread's capabilities dropped (each other thread drops its own).
    static func hardenProcess() {
        let nofile = min(swl_nofile_hard(), 4096)
        _ = swl_set_rlimit(0, nofile, nofile) // RLIMIT_NOFILE: vsock connections, nothing more
        // No RLIMIT_NPROC of 0: seccomp already refuses clone, clone3, fork
        // and vfork to every role, and since Linux 6.13 KVM starts its per-VM
        // worker (kvm-nx-lpage-recovery, a vhost task charged to this user)
        // at the first KVM_RUN. With the limit at 0 that start fails for
        // any user but root, and KVM_RUN returns EAGAIN forever
        // (the README's "Running as an ordinary user" has the trace).
        _ = swl_set_rlimit(2, 0, 0) // RLIMIT_CORE
        _ = swl_drop_capabilities()
        _ = swl_set_no_new_privs()
    }

    private static func fail(_ message: String) -> Never {
        printStderr("swiftlet: error: \(message)")
        _exit(1)
    }

    /// Under `--seccomp=log`: prints, once each, the syscalls outside the
    /// allowlists that this process made, by thread role, from the kernel's
    /// audit records (`type=1326 ... pid=P comm="vcpu0" ... syscall=N`).
    public static func reportLog() {
        guard kmsgFD >= 0 else { return }
        defer { close(kmsgFD); kmsgFD = -1 }
        let pidWord = " pid=\(getpid()) "
        var seen: [String: Int] = [:]
        var order: [String] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(kmsgFD, $0.baseAddress, $0.count) }
            if n < 0 && errno == EPIPE { continue } // records overwritten: go on
            if n <= 0 { break }
            let line = String(decoding: buffer[0..<n], as: UTF8.self)
            guard line.contains("type=1326"), line.contains(pidWord),
                  let comm = field(line, "comm=\""), let nr = field(line, " syscall=").flatMap({ Int32($0) }) else { continue }
            let thread = String(comm.prefix { $0 != "\"" })
            let role = SeccompRole(threadName: thread)?.rawValue ?? (thread == "swiftlet" ? "control" : thread)
            let key = "role=\(role) syscall=\(syscallName(nr))"
            if seen[key] == nil { order.append(key) }
            seen[key, default: 0] += 1
        }
        for key in order {
            let line = "swiftlet: seccomp-log: \(key) count=\(seen[key] ?? 0)"
            printStderr(line)
            if reportFD >= 0 {
                let bytes = Array((line + "\n").utf8)
                _ = bytes.withUnsafeBytes { write(reportFD, $0.baseAddress, $0.count) }
            }
        }
    }

    private static func field(_ line: String, _ prefix: String) -> String? {
        guard let r = line.firstRange(of: prefix) else { return nil }
        return String(line[r.upperBound...].prefix { $0 != " " && $0 != "\n" })
    }

    /// The name of native syscall `nr`.
    public static func syscallName(_ nr: Int32) -> String {
        guard let p = swl_scmp_name(nr) else { return "syscall-\(nr)" }
        defer { free(p) }
        return String(cString: p)
    }
}

func printStderr(_ s: String) {
    let line = Array((s + "\n").utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// Every role's BPF program, compiled on a plain helper thread (not one of
/// `spawnThread`'s, which would be filtered itself), in the order the
/// threads start: the memory-slot thread's first, as it is on the restore's
/// critical path. A thread waits only for its own role's program.
final class CompiledFilters: @unchecked Sendable {
    static let order: [SeccompRole] = [.memslots, .vcpu, .agent, .devices, .control, .consoleIn]
    private let mode: SeccompMode
    private var programs: [SeccompRole: Result<[UInt8], SeccompError>] = [:]
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let ready = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init(mode: SeccompMode) {
        self.mode = mode
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(ready, nil)
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let me = Unmanaged<CompiledFilters>.fromOpaque(arg!).takeRetainedValue()
            me.compileAll()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(t)
        } else {
            box.release()
            compileAll()
        }
    }

    // Lives as long as the process (Seccomp.enable's hooks hold it).
    deinit {
        pthread_cond_destroy(ready)
        pthread_mutex_destroy(mutex)
        ready.deallocate()
        mutex.deallocate()
    }

    private func compileAll() {
        // Every role gets compiled, also one missing from `order`.
        for role in Self.order + SeccompRole.allCases.filter({ !Self.order.contains($0) }) {
            let result: Result<[UInt8], SeccompError>
            do throws(SeccompError) {
                let rules: [SeccompRule]
                do { rules = try role.allowlist() } catch { throw .allowlist(error) }
                result = .success(try Seccomp.compile(rules, mode: mode))
            } catch {
                result = .failure(error)
            }
            pthread_mutex_lock(mutex)
            programs[role] = result
            pthread_cond_broadcast(ready)
            pthread_mutex_unlock(mutex)
        }
    }

    /// The program for `role`, waiting until the helper thread compiled it.
    func program(_ role: SeccompRole) throws(SeccompError) -> [UInt8] {
        pthread_mutex_lock(mutex)
        while programs[role] == nil { pthread_cond_wait(ready, mutex) }
        let result = programs[role]!
        pthread_mutex_unlock(mutex)
        return try result.get()
    }
}
