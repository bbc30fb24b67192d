import CSeccomp
import CSwiftlet

/// The per-role allowlists: one Swift file per role under `allowlists/`, each
/// a block of text with one syscall per line and a one-line reason after `#`.
///
/// A line is `NAME [WORD...] # reason`. Words filter an argument:
/// - `ioctl KVM_RUN TCSETS ...`: only these request numbers (argument 1);
/// - `socket AF_UNIX`: only this address family (argument 0);
/// - `fcntl F_GETFL ...`: only these commands (argument 1);
/// - `mmap !PROT_EXEC`, `mprotect !PROT_EXEC`: never executable memory (argument 2);
/// - `newfstatat AT_EMPTY_PATH`: only with the flag glibc's `fstat` passes (argument 3).
/// `@runtime` includes the `runtime` list (glibc and the Swift runtime on any thread).
enum Allowlists {}

/// One allowed syscall, possibly only for some argument values.
public struct SeccompRule: Sendable, Equatable {
    /// An argument condition: `(args[index] & mask) == value`.
    public struct Condition: Sendable, Equatable {
        public var index: Int32
        public var mask: UInt64
        public var value: UInt64
    }
    public var name: String
    public var number: Int32
    /// Any one of these must hold; empty: the syscall is allowed outright.
    public var anyOf: [Condition]
    public var reason: String
}

/// An allowlist parsing error: the data files are checked by the tests.
public struct AllowlistError: Error, CustomStringConvertible {
    public var description: String
}

/// The thread roles, each with its own allowlist.
public enum SeccompRole: String, Sendable, CaseIterable {
    case vcpu
    case devices
    case control
    case consoleIn = "console-in"
    case memslots
    case agent

    /// The role of a thread `spawnThread` named `name` (`vcpu0`, `devices`, ...); `main` is `control`.
    public init?(threadName name: String) {
        if name == "main" { self = .control; return }
        if name.hasPrefix("vcpu"), !name.dropFirst(4).isEmpty, name.dropFirst(4).allSatisfy(\.isNumber) { self = .vcpu; return }
        self.init(rawValue: name)
    }

    var text: String {
        switch self {
        case .vcpu: Allowlists.vcpu
        case .devices: Allowlists.devices
        case .control: Allowlists.control
        case .consoleIn: Allowlists.consoleIn
        case .memslots: Allowlists.memslots
        case .agent: Allowlists.agent
        }
    }

    /// The role's rules, parsed from its data file.
    public func allowlist() throws(AllowlistError) -> [SeccompRule] {
        try Allowlist.parse(text, role: rawValue)
    }
}

enum Allowlist {
    /// Parses one role's text (with `@runtime` expanded) into rules, one per syscall.
    static func parse(_ text: String, role: String) throws(AllowlistError) -> [SeccompRule] {
        var rules: [SeccompRule] = []
        for raw in text.split(separator: "\n") {
            let hash = raw.firstIndex(of: "#")
            let body = raw[..<(hash ?? raw.endIndex)]
            let reason = hash.map { raw[raw.index(after: $0)...].trimmingSpaces } ?? ""
            let words = body.split(separator: " ").map(String.init)
            guard let name = words.first else { continue }
            guard !reason.isEmpty else { throw AllowlistError(description: "\(role): \(name) has no reason") }
            if name == "@runtime" {
                for rule in try parse(Allowlists.runtime, role: "runtime") where !rules.contains(where: { $0.name == rule.name }) {
                    rules.append(rule)
                }
                continue
            }
            let number = name.withCString { swl_scmp_resolve($0) }
            guard number >= 0 else { throw AllowlistError(description: "\(role): unknown syscall \(name)") }
            var conditions: [SeccompRule.Condition] = []
            for word in words.dropFirst() {
                conditions.append(try condition(syscall: name, word: word, role: role))
            }
            if let i = rules.firstIndex(where: { $0.name == name }) {
                // A role may narrow a runtime rule only by listing it again in full.
                rules[i] = SeccompRule(name: name, number: number, anyOf: conditions, reason: reason)
            } else {
                rules.append(SeccompRule(name: name, number: number, anyOf: conditions, reason: reason))
            }
        }
        return rules
    }

    static func condition(syscall: String, word: String, role: String) throws(AllowlistError) -> SeccompRule.Condition {
        switch syscall {
        case "ioctl":
            guard let v = ioctlRequests[word] else { throw AllowlistError(description: "\(role): unknown ioctl \(word)") }
            return .init(index: 1, mask: 0xffff_ffff, value: v)
        case "socket":
            guard word == "AF_UNIX" else { throw AllowlistError(description: "\(role): socket family \(word) not supported") }
            return .init(index: 0, mask: 0xffff_ffff, value: 1)
        case "fcntl":
            guard let v = fcntlCommands[word] else { throw AllowlistError(description: "\(role): unknown fcntl \(word)") }
            return .init(index: 1, mask: 0xffff_ffff, value: v)
        case "newfstatat":
            guard word == "AT_EMPTY_PATH" else { throw AllowlistError(description: "\(role): newfstatat filter \(word) not supported") }
            return .init(index: 3, mask: 0x1000, value: 0x1000) // what glibc's fstat passes (the path itself cannot be checked)
        case "mmap", "mprotect":
            guard word == "!PROT_EXEC" else { throw AllowlistError(description: "\(role): \(syscall) filter \(word) not supported") }
            return .init(index: 2, mask: 4, value: 0) // PROT_EXEC = 4
        default:
            throw AllowlistError(description: "\(role): no argument filter for \(syscall)")
        }
    }

    /// ioctl requests by name: KVM's from the kernel headers, the terminal's from asm-generic.
    static let ioctlRequests: [String: UInt64] = [
        "KVM_RUN": UInt64(SWL_KVM_RUN),
        "KVM_GET_REGS": UInt64(SWL_KVM_GET_REGS), "KVM_SET_REGS": UInt64(SWL_KVM_SET_REGS),
        "KVM_GET_SREGS": UInt64(SWL_KVM_GET_SREGS), "KVM_SET_SREGS": UInt64(SWL_KVM_SET_SREGS),
        "KVM_GET_FPU": UInt64(SWL_KVM_GET_FPU), "KVM_SET_FPU": UInt64(SWL_KVM_SET_FPU),
        "KVM_GET_XSAVE": UInt64(SWL_KVM_GET_XSAVE), "KVM_SET_XSAVE": UInt64(SWL_KVM_SET_XSAVE),
        "KVM_GET_VCPU_EVENTS": UInt64(SWL_KVM_GET_VCPU_EVENTS), "KVM_SET_VCPU_EVENTS": UInt64(SWL_KVM_SET_VCPU_EVENTS),
        "KVM_GET_MP_STATE": UInt64(SWL_KVM_GET_MP_STATE), "KVM_SET_MP_STATE": UInt64(SWL_KVM_SET_MP_STATE),
        "KVM_GET_LAPIC": UInt64(SWL_KVM_GET_LAPIC), "KVM_SET_LAPIC": UInt64(SWL_KVM_SET_LAPIC),
        "KVM_GET_MSRS": UInt64(SWL_KVM_GET_MSRS), "KVM_SET_MSRS": UInt64(SWL_KVM_SET_MSRS),
        "KVM_TRANSLATE": UInt64(SWL_KVM_TRANSLATE),
        "KVM_IRQ_LINE": UInt64(SWL_KVM_IRQ_LINE), "KVM_IRQFD": UInt64(SWL_KVM_IRQFD), "KVM_IOEVENTFD": UInt64(SWL_KVM_IOEVENTFD),
        "KVM_SET_USER_MEMORY_REGION": UInt64(SWL_KVM_SET_USER_MEMORY_REGION),
        "KVM_GET_CLOCK": UInt64(SWL_KVM_GET_CLOCK),
        // Snapshot: the rest of the vCPU's and the VM's state.
        "KVM_GET_XCRS": UInt64(SWL_KVM_GET_XCRS), "KVM_GET_DEBUGREGS": UInt64(SWL_KVM_GET_DEBUGREGS),
        "KVM_GET_TSC_KHZ": UInt64(SWL_KVM_GET_TSC_KHZ),
        "KVM_GET_IRQCHIP": UInt64(SWL_KVM_GET_IRQCHIP), "KVM_GET_PIT2": UInt64(SWL_KVM_GET_PIT2),
        "TUNSETOFFLOAD": 0x4004_54d0,
        "TCGETS": 0x5401, "TCSETS": 0x5402, "TCSETSW": 0x5403, "TIOCGWINSZ": 0x5413,
    ]

    static let fcntlCommands: [String: UInt64] = ["F_GETFD": 1, "F_SETFD": 2, "F_GETFL": 3, "F_SETFL": 4]
}

extension Substring {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
