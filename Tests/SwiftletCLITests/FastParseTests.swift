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
