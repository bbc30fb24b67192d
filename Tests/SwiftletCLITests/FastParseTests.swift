import Foundation
import Testing

/// `boot` and `run` parse their options without ArgumentParser on the
/// start-up path (Sources/swiftlet/FastParse.swift). These tests hold the fast
/// tables to ArgumentParser's own definitions (`--experimental-dump-help`):
/// an option added to one and not the other, or with another default, fails
/// here instead of silently taking the slow path or a different value.
@Suite struct FastParseTests {
    struct Row: Hashable, CustomStringConvertible {
        let name: String, kind: String, defaultText: String
        var description: String { "--\(name) \(kind) default=\(defaultText)" }
    }

    /// ArgumentParser's options and flags of `command` (help and positionals aside).
    func argumentParserRows(_ command: String) throws -> Set<Row> {
        let r = try CLI.run([command, "--experimental-dump-help"], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let root = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let info = try #require(root["command"] as? [String: Any])
        let arguments = try #require(info["arguments"] as? [[String: Any]])
        var rows = Set<Row>()
        for a in arguments {
            let kind = a["kind"] as? String ?? ""
            let names = (a["names"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "long" }.compactMap { $0["name"] as? String }
            guard kind != "positional", let name = names.first, name != "help" else { continue }
            let fastKind = kind == "flag" ? "flag" : (a["isRepeating"] as? Bool == true ? "repeating" : "value")
            rows.insert(Row(name: name, kind: fastKind, defaultText: a["defaultValue"] as? String ?? "-"))
        }
        return rows
    }

    /// The fast path's table for `command`, as `swiftlet __fast-options` prints it.
    func fastRows(_ command: String) throws -> Set<Row> {
        let r = try CLI.run(["__fast-options"], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        var rows = Set<Row>()
        for line in r.stdout.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard f.count == 4, f[0] == command else { continue }
            rows.insert(Row(name: f[1], kind: f[2], defaultText: f[3]))
        }
        return rows
    }

    @Test("the fast parser knows exactly ArgumentParser's options, with the same kinds and defaults", arguments: ["boot", "run"])
    func tablesMatchArgumentParser(command: String) throws {
        let expected = try argumentParserRows(command)
        let fast = try fastRows(command)
        #expect(expected.count > 10, "dump-help listed \(expected.count) options")
        #expect(fast.subtracting(expected).isEmpty, "only in the fast table: \(fast.subtracting(expected))")
        #expect(expected.subtracting(fast).isEmpty, "only in ArgumentParser: \(expected.subtracting(fast))")
    }

    /// `swiftlet __parsed ARGS`: the options the fast parser and then
    /// ArgumentParser make of ARGS, one line each. Descriptors 5 and 6 are
    /// open, so that --start-fd and --report-fd validate.
    func parsed(_ args: [String]) throws -> [String] {
        let out = try CLI.tempFile("out"), err = try CLI.tempFile("err")
        defer { unlink(out); unlink(err) }
        let pid = try CLI.spawn(["sh", "-c", "exec \"$0\" \"$@\" 5</dev/null 6</dev/null", CLI.binary, "__parsed"] + args,
                                stdout: out, stderr: err)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        #expect(CLI.exitCode(status) == 0, "\(args): \(CLI.readText(err))")
        return CLI.readText(out).split(separator: "\n").map(String.init)
    }

    /// Each option of `boot` and `run`, after what it needs (`--jail` for
    /// `--uid`...): both parsers must agree, and the option must change the
    /// options made of its prefix alone, so that no field is dropped on
    /// either side (ArgumentParser's struct is copied into the plain one
    /// field by field).
    @Test("both parsers make the same options of each option", arguments: [
        ("boot", [[], ["--kernel", "/k"], ["--initrd", "/i"], ["--rootfs", "/r,ephemeral"], ["--drive", "/a,ro", "--drive=/b"],
                  ["--cmdline", "c d"], ["--append", "x=1"], ["--mem", "256"], ["--cpus", "2"], ["--boot-timer"], ["--stats"],
                  ["--cpu-template", "host"], ["--timeout", "1.5"], ["--kvm-device", "/dev/x"], ["--seccomp", "log"],
                  ["--vsock-uds", "/v"], ["--vsock-uds", "/v", "--vsock-cid", "7"], ["--net", "auto"], ["--jail"],
                  ["--jail", "--uid", "1000"], ["--jail", "--gid", "1001"], ["--jail", "--jail-memory-margin", "32"],
                  ["--jail", "--jail-pids", "99"], ["--jail", "--jail-cpus", "0.5"]]),
        ("run", [[], ["--kernel", "/k"], ["--rootfs", "/r"], ["--drive", "/d", "--drive=/e"], ["--mem", "64"], ["--cpus", "3"],
                 ["--snapshot", "/s"], ["--cold"], ["--timeout", "2"], ["--boot-timeout", "9"], ["--env", "A=1", "--env=B=2"],
                 ["--workdir", "/w"], ["--vsock-uds", "/v"], ["--append", "y"], ["--net", "tap=t0"], ["--console", "/c"],
                 ["--timings"], ["--kvm-device", "/dev/y"], ["--start-fd", "5"], ["--report-fd", "6"], ["--seccomp", "off"],
                 ["--jail"], ["--jail", "--uid", "7"], ["--jail", "--gid", "8"], ["--jail", "--jail-memory-margin", "1"],
                 ["--jail", "--jail-pids", "20"], ["--jail", "--jail-cpus", "2"]]),
    ])
    func parsersAgree(command: String, cases: [[String]]) throws {
        // `run` takes its command after `--`, and a command that looks like options.
        let tail = command == "run" ? ["--", "sh", "-c", "echo --mem 1"] : []
        var seen: [String: String] = [:]
        for option in cases {
            let lines = try parsed([command] + option + tail)
            #expect(lines.count == 2 && lines[0] != "nil", "\(option): \(lines)")
            #expect(lines.first == lines.last, "\(option):\nfast:           \(lines.first ?? "")\nArgumentParser: \(lines.last ?? "")")
            seen[option.joined(separator: " ")] = lines.first
        }
        // The prefix: the longest other case that this one starts with.
        for option in cases where !option.isEmpty {
            let prefix = cases.filter { $0.count < option.count && Array(option.prefix($0.count)) == $0 }.max { $0.count < $1.count } ?? []
            #expect(seen[option.joined(separator: " ")] != seen[prefix.joined(separator: " ")], "\(option) changed nothing")
        }
    }

    @Test("what the fast path cannot take goes to ArgumentParser, with its usual one-line errors",
          arguments: [
            (["boot", "--bogus"], "Unknown option '--bogus'"),
            (["boot", "--mem", "12x"], "The value '12x' is invalid for '--mem <mem>'"),
            (["boot", "--mem"], "Missing value for '--mem <mem>'"),
            (["boot", "--stats=yes"], "--stats"),
            (["run", "--cpus", "two", "--", "true"], "The value 'two' is invalid for '--cpus <cpus>'"),
          ])
    func slowPathErrors(args: [String], text: String) throws {
        let r = try CLI.run(args, timeout: 60)
        // `run` gives its own failures 125 (the command's statuses are its own).
        #expect(r.status == (args[0] == "run" ? 125 : 1), "\(args): status \(r.status)")
        #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("swiftlet: error: ") && r.stderr.contains(text), "\(args): \(r.stderr)")
    }
}
