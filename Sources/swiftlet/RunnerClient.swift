import ArgumentParser
import Glibc

/// `swiftlet serve|fn|invoke|job`: the job runner and its client live in
/// `swiftletd`, which links the server libraries this binary must not
/// (SwiftNIO, Hummingbird, SQLite): these exec it with the same arguments.
/// It is looked for in `$SWIFTLETD`, beside this binary, then on PATH.
enum RunnerClient {
    // An array: a Set<String> is instantiated at run time, which checks
    // String: Hashable by scanning every conformance record in the binary
    // (0.23 M instructions and their pages, on every VMM's start-up).
    static let commands = ["serve", "fn", "invoke", "job"]

    /// Replaces this process with `swiftletd ARGS...`; returns only on failure.
    static func exec(_ arguments: [String]) -> Never {
        var candidates: [String] = []
        if let env = getenv("SWIFTLETD") { candidates.append(String(cString: env)) }
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if n > 0 {
            let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let slash = exe.lastIndex(of: "/") { candidates.append(String(exe[..<slash]) + "/swiftletd") }
        }
        let argv = ["swiftletd"] + arguments
        var cArgs = argv.map { strdup($0) } + [nil]
        for path in candidates where access(path, X_OK) == 0 {
            execv(path, &cArgs)
        }
        execvp("swiftletd", &cArgs)
        printError("the job runner is the separate binary swiftletd, not found beside swiftlet or on PATH (build it: swift build --product swiftletd; or set SWIFTLETD)")
        Glibc.exit(ExitStatus.usage)
    }
}

/// Stand-ins so that `swiftlet --help` lists the runner's commands.
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the job runner daemon (swiftletd serve; see `swiftlet serve --help`).")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []
    func run() throws { RunnerClient.exec(["serve"] + arguments) }
}

struct FnCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fn", abstract: "Deploy, list and remove the job runner's functions.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []
    func run() throws { RunnerClient.exec(["fn"] + arguments) }
}

struct InvokeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "invoke", abstract: "Invoke a job runner function with stdin as the payload.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []
    func run() throws { RunnerClient.exec(["invoke"] + arguments) }
}

struct JobClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "job", abstract: "Show, wait for or cancel a job runner job.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []
    func run() throws { RunnerClient.exec(["job"] + arguments) }
}
