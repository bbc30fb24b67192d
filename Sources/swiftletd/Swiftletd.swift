import ArgumentParser

/// `swiftletd`: Swiftlet's job runner daemon and its client.
@main
struct Swiftletd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swiftletd",
        abstract: "Swiftlet's job runner: functions invoked over HTTP, each invocation in its own microVM.",
        subcommands: [Serve.self]
    )
}
