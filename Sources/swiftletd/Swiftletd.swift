import ArgumentParser
import Glibc
import Foundation

/// `swiftletd`: Swiftlet's job runner daemon (`serve`) and its client
/// (`fn`, `invoke`, `job`), which `swiftlet serve|fn|invoke|job` exec.
@main
struct Swiftletd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftletd",
        abstract: "Swiftlet's job runner: functions invoked over HTTP, each invocation in its own microVM.",
        subcommands: [Serve.self, Fn.self, Invoke.self, JobCommand.self]
    )

    /// Errors as one line, `swiftlet: error: ...`, and exit 1 (usage 64 as ArgumentParser's).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as ClientFailure {
            FileHandle.standardError.write(Data("swiftlet: error: \(failure.description)\n".utf8))
            Glibc.exit(1)
        } catch {
            exit(withError: error)
        }
    }
}
