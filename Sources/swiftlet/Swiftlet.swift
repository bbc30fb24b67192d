import ArgumentParser
import Glibc
import SwiftletSys
import SwiftletVMM

/// `swiftlet`: a microVM launcher for fast-booting Linux guests on KVM.
@main
struct Swiftlet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftlet",
        abstract: "A microVM launcher for fast-booting Linux guests on KVM.",
        subcommands: [Boot.self, Run.self, SnapshotCommand.self, ImageCommand.self, ServeCommand.self, FnCommand.self, InvokeCommand.self, JobClientCommand.self]
    )

    /// Parses and runs, printing errors as one line: `swiftlet: error: ...`.
    static func main() {
        // The job runner's commands are swiftletd's, arguments untouched.
        if let first = CommandLine.arguments.dropFirst().first, RunnerClient.commands.contains(first) {
            RunnerClient.exec(Array(CommandLine.arguments.dropFirst()))
        }
        do {
            // `boot` and `run` skip ArgumentParser when they can (FastParse.swift).
            let arguments = CommandLine.arguments.dropFirst()
            if arguments.first == "run", let run = RunOptions.parseFast(arguments.dropFirst()) {
                try run.validate()
                try run.run()
            } else if arguments.first == "boot", let boot = BootOptions.parseFast(arguments.dropFirst()) {
                try boot.validate()
                try boot.run()
            } else if arguments.first == "__fast-options" {
                for line in FastOptionsDump.lines() { printStdout(line) }
            } else if arguments.first == "__parsed", arguments.count >= 2 {
                let rest = Array(arguments.dropFirst(2))
                for line in try FastOptionsDump.parsed(arguments[arguments.startIndex + 1], rest) { printStdout(line) }
            } else {
                var command = try parseAsRoot()
                try command.run()
            }
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            let code = exitCode(for: error)
            // `run` exits with the command's own status, so its own failures take 125.
            let isRun = CommandLine.arguments.dropFirst().first == "run"
            if code == .success {
                // --help and --version print their text and succeed.
                Swiftlet.exit(withError: error)
            }
            let message = Swiftlet.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            printError(message)
            if isRun { Glibc.exit(ExitStatus.runFailure) }
            Glibc.exit(code == .validationFailure ? ExitStatus.usage : code.rawValue)
        }
    }
}

/// Exit statuses of `swiftlet boot`.
enum ExitStatus {
    /// The guest powered off or rebooted.
    static let clean: Int32 = 0
    /// Swiftlet could not start the machine (bad input, no KVM).
    static let usage: Int32 = 1
    /// The guest crashed: panic, triple fault, or an instruction KVM could not emulate.
    static let guestCrash: Int32 = 2
    /// The `--timeout` ran out.
    static let timeout: Int32 = 124
    /// `swiftlet run` could not run the command (bad input, no agent in the image).
    static let runFailure: Int32 = 125
}

/// Prints `swiftlet: error: MESSAGE` as one line on stderr.
func printError(_ message: String) {
    writeLine("swiftlet: error: " + message.replacingNewlines(), to: 2)
}

/// Prints a line on stdout.
func printStdout(_ line: String) { writeLine(line, to: 1) }

/// Prints a line on stderr.
func printStderr(_ line: String) { writeLine(line, to: 2) }

extension String {
    func replacingNewlines() -> String {
        String(map { $0 == "\n" ? " " : $0 })
    }
}

/// Where the default kernel and rootfs live: `$SWIFTLET_CACHE`, else
/// `$XDG_CACHE_HOME/swiftlet`, else `~/.cache/swiftlet`. `make` puts the
/// images built from `kernels/` and `rootfs/` under `default/` there.
enum Paths {
    static var cacheRoot: String {
        if let d = getenv("SWIFTLET_CACHE") { return String(cString: d) }
        if let x = getenv("XDG_CACHE_HOME") { return String(cString: x) + "/swiftlet" }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/root"
        return home + "/.cache/swiftlet"
    }
    static var defaultKernel: String { cacheRoot + "/default/bzImage" }
    static var defaultInitrd: String { cacheRoot + "/default/initramfs.cpio" }
    static var defaultRootfs: String { cacheRoot + "/default/rootfs.ext4" }
    static var kernelCache: String { cacheRoot + "/kernels" }
}
