import SwiftletSeccomp

// The start-up path without ArgumentParser.
//
// ArgumentParser builds its model of a command by reflection before it
// parses a single argument: for `boot` that was 15 of its 20 million
// instructions from exec to the first KVM_RUN (callgrind; issue 19). `boot`
// and `run` therefore parse well-formed long options from these tables, and
// hand anything else (help, an unknown, misspelt or malformed option, a value
// that does not convert) to ArgumentParser, which prints the usual help and
// errors. The tables are checked against ArgumentParser's own definitions
// (`swiftlet __fast-options` against `--experimental-dump-help`, in
// SwiftletCLITests), so an option added to one and not the other fails a test
// instead of silently taking the slow path.

/// How an option takes values.
enum FastOptionKind: String { case flag, value, repeating }

/// One long option of `Command`, as the fast path parses it.
struct FastOption<Command> {
    let name: String
    let kind: FastOptionKind
    /// ArgumentParser's default as its help dump spells it (nil: none).
    let defaultText: String?
    /// Gives the field its default: ArgumentParser's property wrappers hold
    /// no value until something parses them.
    let reset: (inout Command) -> Void
    /// Applies one occurrence; false when the value does not convert.
    let apply: (inout Command, String) -> Bool

    /// A flag: false unless given.
    static func flag(_ name: String, _ set: @escaping (inout Command, Bool) -> Void) -> Self {
        Self(name: name, kind: .flag, defaultText: nil, reset: { set(&$0, false) }, apply: { c, _ in set(&c, true); return true })
    }

    /// An option with a default.
    static func value<T: LosslessStringConvertible>(_ name: String, default value: T, _ set: @escaping (inout Command, T) -> Void) -> Self {
        Self(name: name, kind: .value, defaultText: value.description, reset: { set(&$0, value) }, apply: { c, text in
            guard let v = T(text) else { return false }
            set(&c, v)
            return true
        })
    }

    /// An option that is nil unless given.
    static func optional<T: LosslessStringConvertible>(_ name: String, _ set: @escaping (inout Command, T?) -> Void) -> Self {
        Self(name: name, kind: .value, defaultText: nil, reset: { set(&$0, nil) }, apply: { c, text in
            guard let v = T(text) else { return false }
            set(&c, v)
            return true
        })
    }

    /// A repeatable option: every occurrence, in order.
    static func list(_ name: String, clear: @escaping (inout Command) -> Void, add: @escaping (inout Command, String) -> Void) -> Self {
        Self(name: name, kind: .repeating, defaultText: nil, reset: clear, apply: { c, text in add(&c, text); return true })
    }

    /// This option on a command that holds `Command` as one of its fields
    /// (an `@OptionGroup`).
    func lifted<Outer>(_ access: @escaping (inout Outer, (inout Command) -> Bool) -> Bool) -> FastOption<Outer> {
        let (reset, apply) = (self.reset, self.apply)
        return FastOption<Outer>(
            name: name, kind: kind, defaultText: defaultText,
            reset: { outer in _ = access(&outer) { reset(&$0); return true } },
            apply: { outer, text in access(&outer) { apply(&$0, text) } }
        )
    }
}

/// A command that the fast path can parse.
protocol FastParsable {
    /// A value whose fields are not set yet (ArgumentParser's `init()`).
    init()
    static var fastOptions: [FastOption<Self>] { get }
    /// Gives each `@OptionGroup` a value, whose own fields the options then reset.
    mutating func initializeGroups()
    /// Takes the arguments after `--`; false when the command does not take them.
    mutating func takeTerminated(_ arguments: [String]) -> Bool
}

extension FastParsable {
    /// `arguments`: those after the subcommand's name. Nil when anything in
    /// them is not a well-formed long option of this command.
    static func parseFast(_ arguments: ArraySlice<String>) -> Self? {
        let options = fastOptions
        var command = Self()
        command.initializeGroups()
        for option in options { option.reset(&command) }
        var terminated = false
        var i = arguments.startIndex
        while i < arguments.endIndex {
            let argument = arguments[i]
            if argument == "--" {
                guard command.takeTerminated(Array(arguments[(i + 1)...])) else { return nil }
                terminated = true
                break
            }
            guard argument.hasPrefix("--") else { return nil }
            var name = Substring(argument.dropFirst(2))
            var inline: String?
            if let eq = name.firstIndex(of: "=") {
                inline = String(name[name.index(after: eq)...])
                name = name[..<eq]
            }
            guard let option = options.first(where: { $0.name == name }) else { return nil }
            let value: String
            if option.kind == .flag {
                guard inline == nil else { return nil }
                value = ""
            } else if let inline {
                value = inline
            } else {
                i += 1
                // A value that looks like an option is ArgumentParser's to judge.
                guard i < arguments.endIndex, !arguments[i].hasPrefix("-") else { return nil }
                value = arguments[i]
            }
            guard option.apply(&command, value) else { return nil }
            i += 1
        }
        if !terminated {
            guard command.takeTerminated([]) else { return nil }
        }
        return command
    }
}

extension JailOptions {
    static var fastOptions: [FastOption<JailOptions>] {
        [
            .flag("jail") { $0.jail = $1 },
            .optional("uid") { $0.uid = $1 },
            .optional("gid") { $0.gid = $1 },
            .optional("jail-memory-margin") { $0.jailMemoryMargin = $1 },
            .optional("jail-pids") { $0.jailPids = $1 },
            .optional("jail-cpus") { $0.jailCpus = $1 },
        ]
    }
}

extension Boot: FastParsable {
    static var fastOptions: [FastOption<Boot>] {
        [
            .optional("kernel") { $0.kernel = $1 },
            .optional("initrd") { $0.initrd = $1 },
            .optional("rootfs") { $0.rootfs = $1 },
            .list("drive", clear: { $0.drives = [] }, add: { $0.drives.append($1) }),
            .optional("cmdline") { $0.cmdline = $1 },
            .optional("append") { $0.append = $1 },
            .value("mem", default: 128) { $0.mem = $1 },
            .value("cpus", default: 1) { $0.cpus = $1 },
            .flag("boot-timer") { $0.bootTimer = $1 },
            .flag("stats") { $0.stats = $1 },
            .value("cpu-template", default: "auto") { $0.cpuTemplate = $1 },
            .optional("timeout") { $0.timeout = $1 },
            .value("kvm-device", default: "/dev/kvm") { $0.kvmDevice = $1 },
            .value("seccomp", default: Seccomp.defaultModeName) { $0.seccomp = $1 },
            .optional("vsock-uds") { $0.vsockUDS = $1 },
            .optional("vsock-cid") { $0.vsockCID = $1 },
            .optional("net") { $0.net = $1 },
        ] + JailOptions.fastOptions.map { $0.lifted { boot, body in body(&boot.jail) } }
    }

    mutating func initializeGroups() { jail = JailOptions() }

    mutating func takeTerminated(_ arguments: [String]) -> Bool { arguments.isEmpty }
}

extension Run: FastParsable {
    static var fastOptions: [FastOption<Run>] {
        [
            .optional("kernel") { $0.kernel = $1 },
            .optional("rootfs") { $0.rootfs = $1 },
            .list("drive", clear: { $0.drives = [] }, add: { $0.drives.append($1) }),
            .optional("mem") { $0.mem = $1 },
            .optional("cpus") { $0.cpus = $1 },
            .optional("snapshot") { $0.snapshot = $1 },
            .flag("cold") { $0.cold = $1 },
            .optional("timeout") { $0.timeout = $1 },
            .value("boot-timeout", default: Run.defaultBootTimeout) { $0.bootTimeout = $1 },
            .list("env", clear: { $0.environment = [] }, add: { $0.environment.append($1) }),
            .optional("workdir") { $0.workdir = $1 },
            .optional("vsock-uds") { $0.vsockUds = $1 },
            .optional("append") { $0.append = $1 },
            .optional("net") { $0.net = $1 },
            .optional("console") { $0.console = $1 },
            .flag("timings") { $0.timings = $1 },
            .value("kvm-device", default: Run.defaultKVMDevice) { $0.kvmDevice = $1 },
            .optional("start-fd") { $0.startFd = $1 },
            .optional("report-fd") { $0.reportFd = $1 },
            .value("seccomp", default: Seccomp.defaultModeName) { $0.seccomp = $1 },
        ] + JailOptions.fastOptions.map { $0.lifted { run, body in body(&run.jail) } }
    }

    mutating func initializeGroups() { jail = JailOptions() }

    /// The command: required, so `run` without one is ArgumentParser's (and
    /// `validate`'s) to report.
    mutating func takeTerminated(_ arguments: [String]) -> Bool {
        command = arguments
        return !arguments.isEmpty
    }
}

/// `swiftlet __fast-options`: the tables above, one option per line
/// (`COMMAND NAME KIND DEFAULT`), for the test that holds them to
/// ArgumentParser's definitions. Not a user command.
enum FastOptionsDump {
    static func lines() -> [String] {
        func rows<C>(_ command: String, _ options: [FastOption<C>]) -> [String] {
            options.map { "\(command) \($0.name) \($0.kind.rawValue) \($0.defaultText ?? "-")" }
        }
        return rows("boot", Boot.fastOptions) + rows("run", Run.fastOptions)
    }
}
