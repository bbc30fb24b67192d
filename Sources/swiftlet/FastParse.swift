import ArgumentParser
import SwiftletSeccomp

// The start-up path without ArgumentParser.
//
// ArgumentParser builds its model of a command by reflection before it
// parses a single argument: for `boot` that was 15 of its 20 million
// instructions from exec to the first KVM_RUN (callgrind; issue 19). `boot`
// and `run` therefore parse well-formed long options from these tables, and
// hand anything else (help, an unknown, misspelt or malformed option, a value
// that does not convert) to ArgumentParser, which prints the usual help and
// errors. Both produce the same plain values (`BootOptions`, `RunOptions`):
// the fast path never constructs ArgumentParser's property wrappers, whose
// code and metadata would otherwise be paged in at every start. The tables
// are checked against ArgumentParser's own definitions
// (`swiftlet __fast-options` against `--experimental-dump-help`, in
// SwiftletCLITests), so an option added to one and not the other fails a test
// instead of silently taking the slow path.

/// How an option takes values.
enum FastOptionKind: String { case flag, value, repeating }

/// One long option of `Options`, as the fast path parses it.
struct FastOption<Options>: Sendable {
    let name: String
    let kind: FastOptionKind
    /// The option's value in `Options()`, as ArgumentParser's help dump
    /// spells a default (nil: none).
    let defaultText: @Sendable (Options) -> String?
    /// Applies one occurrence; false when the value does not convert.
    let apply: @Sendable (inout Options, String) -> Bool

    /// A flag: false unless given.
    static func flag(_ name: String, _ set: @escaping @Sendable (inout Options) -> Void) -> Self {
        Self(name: name, kind: .flag, defaultText: { _ in nil }, apply: { o, _ in set(&o); return true })
    }

    /// An option with a default.
    static func value<T: LosslessStringConvertible & Sendable>(_ name: String, _ get: @escaping @Sendable (Options) -> T, _ set: @escaping @Sendable (inout Options, T) -> Void) -> Self {
        Self(name: name, kind: .value, defaultText: { get($0).description }, apply: { o, text in
            guard let v = T(text) else { return false }
            set(&o, v)
            return true
        })
    }

    /// An option that is nil unless given.
    static func optional<T: LosslessStringConvertible & Sendable>(_ name: String, _ set: @escaping @Sendable (inout Options, T) -> Void) -> Self {
        Self(name: name, kind: .value, defaultText: { _ in nil }, apply: { o, text in
            guard let v = T(text) else { return false }
            set(&o, v)
            return true
        })
    }

    /// A repeatable option: every occurrence, in order.
    static func list(_ name: String, _ add: @escaping @Sendable (inout Options, String) -> Void) -> Self {
        Self(name: name, kind: .repeating, defaultText: { _ in nil }, apply: { o, text in add(&o, text); return true })
    }

    /// This option on options that hold `Options` as one of their fields
    /// (an `@OptionGroup`).
    func lifted<Outer>(_ get: @escaping @Sendable (Outer) -> Options, _ modify: @escaping @Sendable (inout Outer, (inout Options) -> Bool) -> Bool) -> FastOption<Outer> {
        let (defaultText, apply) = (self.defaultText, self.apply)
        return FastOption<Outer>(
            name: name, kind: kind,
            defaultText: { defaultText(get($0)) },
            apply: { outer, text in modify(&outer) { apply(&$0, text) } }
        )
    }
}

/// Options that the fast path can parse.
protocol FastParsable {
    /// Every option at its default.
    init()
    /// A `static let`: built once and never freed, so that no closure
    /// context is destroyed on the start-up path (those destructors are
    /// private symbols that the link order cannot name, each one more
    /// page of code touched).
    static var fastOptions: [FastOption<Self>] { get }
    /// Takes the arguments after `--`; false when the command does not take them.
    mutating func takeTerminated(_ arguments: [String]) -> Bool
}

extension FastParsable {
    /// `arguments`: those after the subcommand's name. Nil when anything in
    /// them is not a well-formed long option of this command.
    static func parseFast(_ arguments: ArraySlice<String>) -> Self? {
        let options = fastOptions
        var parsed = Self()
        var terminated = false
        var i = arguments.startIndex
        while i < arguments.endIndex {
            let argument = arguments[i]
            if argument == "--" {
                guard parsed.takeTerminated(Array(arguments[(i + 1)...])) else { return nil }
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
            guard option.apply(&parsed, value) else { return nil }
            i += 1
        }
        if !terminated {
            guard parsed.takeTerminated([]) else { return nil }
        }
        return parsed
    }
}

extension JailOptions {
    static let fastOptions: [FastOption<JailOptions>] = [
        .flag("jail") { $0.jail = true },
        .optional("uid") { $0.uid = $1 },
        .optional("gid") { $0.gid = $1 },
        .optional("jail-memory-margin") { $0.jailMemoryMargin = $1 },
        .optional("jail-pids") { $0.jailPids = $1 },
        .optional("jail-cpus") { $0.jailCpus = $1 },
    ]
}

extension BootOptions: FastParsable {
    static let fastOptions: [FastOption<BootOptions>] = [
        .optional("kernel") { $0.kernel = $1 },
        .optional("initrd") { $0.initrd = $1 },
        .optional("rootfs") { $0.rootfs = $1 },
        .list("drive") { $0.drives.append($1) },
        .optional("cmdline") { $0.cmdline = $1 },
        .optional("append") { $0.append = $1 },
        // Optional in `GuestOptions` (run's default comes from a snapshot); boot's is BootOptions'.
        .optional("mem") { $0.mem = $1 },
        .optional("cpus") { $0.cpus = $1 },
        .flag("boot-timer") { $0.bootTimer = true },
        .flag("stats") { $0.stats = true },
        .value("cpu-template", { $0.cpuTemplate }) { $0.cpuTemplate = $1 },
        .optional("timeout") { $0.timeout = $1 },
        .value("kvm-device", { $0.kvmDevice }) { $0.kvmDevice = $1 },
        .value("seccomp", { $0.seccomp }) { $0.seccomp = $1 },
        .optional("vsock-uds") { $0.vsockUDS = $1 },
        .optional("vsock-cid") { $0.vsockCID = $1 },
        .optional("net") { $0.net = $1 },
    ] + JailOptions.fastOptions.map { $0.lifted({ $0.jail }) { boot, body in body(&boot.jail) } }

    mutating func takeTerminated(_ arguments: [String]) -> Bool { arguments.isEmpty }
}

extension RunOptions: FastParsable {
    static let fastOptions: [FastOption<RunOptions>] = [
        .optional("kernel") { $0.kernel = $1 },
        .optional("rootfs") { $0.rootfs = $1 },
        .optional("image") { $0.image = $1 },
        .optional("user") { $0.user = $1 },
        .list("drive") { $0.drives.append($1) },
        .optional("mem") { $0.mem = $1 },
        .optional("cpus") { $0.cpus = $1 },
        .optional("snapshot") { $0.snapshot = $1 },
        .flag("cold") { $0.cold = true },
        .optional("timeout") { $0.timeout = $1 },
        .value("boot-timeout", { $0.bootTimeout }) { $0.bootTimeout = $1 },
        .list("env") { $0.environment.append($1) },
        .optional("workdir") { $0.workdir = $1 },
        .optional("vsock-uds") { $0.vsockUds = $1 },
        .optional("append") { $0.append = $1 },
        .optional("net") { $0.net = $1 },
        .optional("console") { $0.console = $1 },
        .flag("timings") { $0.timings = true },
        .value("kvm-device", { $0.kvmDevice }) { $0.kvmDevice = $1 },
        .optional("start-fd") { $0.startFd = $1 },
        .optional("report-fd") { $0.reportFd = $1 },
        .value("seccomp", { $0.seccomp }) { $0.seccomp = $1 },
        .list("warm") { $0.warm.append($1) },
    ] + JailOptions.fastOptions.map { $0.lifted({ $0.jail }) { run, body in body(&run.jail) } }

    /// The command: required, so `run` without one is ArgumentParser's (and
    /// `validate`'s) to report.
    mutating func takeTerminated(_ arguments: [String]) -> Bool {
        command = arguments
        return !arguments.isEmpty
    }
}

/// `swiftlet __fast-options`: the tables above, one option per line
/// (`COMMAND NAME KIND DEFAULT`), for the test that holds them to
/// ArgumentParser's definitions; `swiftlet __parsed boot|run ARGS...`: the
/// options each parser makes of ARGS, one line each (fast, then
/// ArgumentParser's), for the test that holds them equal. Not user commands.
enum FastOptionsDump {
    static func lines() -> [String] {
        func rows<O>(_ command: String, _ options: [FastOption<O>], _ defaults: O) -> [String] {
            options.map { "\(command) \($0.name) \($0.kind.rawValue) \($0.defaultText(defaults) ?? "-")" }
        }
        return rows("boot", BootOptions.fastOptions, BootOptions()) + rows("run", RunOptions.fastOptions, RunOptions())
    }

    static func parsed(_ command: String, _ arguments: [String]) throws -> [String] {
        func both<O: FastParsable, C: ParsableCommand>(_: C.Type, _ options: (C) -> O) throws -> [String] {
            [O.parseFast(arguments[...]).map { "\($0)" } ?? "nil", "\(options(try C.parse(arguments)))"]
        }
        switch command {
        case "boot": return try both(Boot.self) { $0.options }
        case "run": return try both(Run.self) { $0.options }
        default: throw ValidationError("__parsed takes boot or run")
        }
    }
}
