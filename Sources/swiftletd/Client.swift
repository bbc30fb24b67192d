import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// The runner's client (`swiftlet fn|invoke|job` exec these): the native
/// API over HTTP, so that nobody needs curl.
struct ClientOptions: ParsableArguments {
    @Option(help: "The runner's URL (default: $SWIFTLET_ENDPOINT, else http://127.0.0.1:8080).")
    var endpoint: String?

    var baseURL: String {
        (endpoint ?? ProcessInfo.processInfo.environment["SWIFTLET_ENDPOINT"] ?? "http://127.0.0.1:8080")
            .trimmingCharacters(in: CharacterSet(charactersIn: "/"))
    }

    /// Sends one request; returns status, headers and body. A transport
    /// failure is one line and exit 1. AsyncHTTPClient on SwiftNIO, waited
    /// on from this thread: URLSession (FoundationNetworking's libcurl)
    /// kept a CPU busy for as long as a call lasted.
    func send(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:], timeout: Double = 3600) throws -> (Int, [String: String], Data) {
        var fields = HTTPHeaders(headers.map { ($0.key, $0.value) })
        if let token = ProcessInfo.processInfo.environment["SWIFTLET_TOKEN"] { fields.replaceOrAdd(name: "Authorization", value: "Bearer \(token)") }
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: baseURL + path, method: HTTPMethod(rawValue: method), headers: fields,
                                             body: body.map { .bytes(Array($0)) })
        } catch {
            throw ClientFailure("bad endpoint \(baseURL): \(error)")
        }
        let response: HTTPClient.Response
        do {
            response = try HTTPClient.shared.execute(request: request, deadline: .now() + .milliseconds(Int64(timeout * 1000))).wait()
        } catch let e as HTTPClientError where e == .deadlineExceeded {
            throw ClientFailure("no answer from the runner at \(baseURL) within \(Int(timeout)) s")
        } catch {
            throw ClientFailure("cannot reach the runner at \(baseURL): \(String(describing: error).split(whereSeparator: \.isNewline).joined(separator: " "))")
        }
        var h: [String: String] = [:]
        for (name, value) in response.headers { h[name.lowercased()] = value }
        return (Int(response.status.code), h, response.body.map { Data($0.readableBytesView) } ?? Data())
    }

    /// The body of a response with the expected status (any 2xx when nil),
    /// or the API's error as one line.
    func expectBody(_ r: (Int, [String: String], Data), status expected: Int? = nil) throws -> Data {
        let (status, _, data) = r
        guard expected.map({ $0 == status }) ?? (200..<300).contains(status) else {
            throw ClientFailure(Self.errorMessage(status, (try? JSONSerialization.jsonObject(with: data)) as? [String: Any], data))
        }
        return data
    }

    /// The JSON object of a 2xx body, or the API's error as one line.
    func expectJSON(_ r: (Int, [String: String], Data)) throws -> [String: Any] {
        let body = try expectBody(r)  // outside the try?: an error status is a failure, not an empty object
        return (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]
    }

    static func errorMessage(_ status: Int, _ object: [String: Any]?, _ data: Data) -> String {
        if let e = object?["error"] as? [String: Any], let m = e["message"] as? String { return "\(m) (HTTP \(status))" }
        if let m = object?["message"] as? String { return "\(m) (HTTP \(status))" }
        return "HTTP \(status): \(String(decoding: data.prefix(200), as: UTF8.self))"
    }
}

struct ClientFailure: Error, CustomStringConvertible {
    var description: String
    init(_ m: String) { description = m }
}

func printJSON(_ object: Any) {
    if let d = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) {
        FileHandle.standardOutput.write(d + Data("\n".utf8))
    }
}

func readStdin() -> Data { FileHandle.standardInput.readDataToEndOfFile() }

struct Fn: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fn", abstract: "Deploy, list, show and remove functions.",
                                                    subcommands: [FnDeploy.self, FnList.self, FnShow.self, FnRemove.self])
}

struct FnDeploy: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deploy", abstract: "Deploy a function (a new version when it changed): swiftlet fn deploy NAME [options] -- CMD [ARGS...]")
    @OptionGroup var client: ClientOptions
    @Argument(help: "The function's name.") var name: String
    @Option(help: "A JSON spec file (PUT /v1/functions/{name}'s body) instead of the options.") var file: String?
    @Option(help: ArgumentHelp("Root image (default: the built rootfs): a path to an ext4 image, booted as it is, or any image `swiftlet run --image` takes, converted at deploy (an OCI layout, a docker save archive, a rootfs tarball, a directory): an absolute path, or oci:DIR[:TAG], docker-archive:FILE, tar:FILE, dir:DIR, ext4:FILE with an absolute path.", valueName: "REF")) var image: String?
    @Option(help: ArgumentHelp("With an --image other than a plain ext4 path: the user of the image the handler runs as (name or uid, optionally :group).", valueName: "USER[:GROUP]")) var user: String?
    @Option(help: "Guest memory in MiB.") var mem: Int?
    @Option(help: "vCPUs.") var cpus: Int?
    @Option(help: "Seconds a call may run.") var timeout: Double?
    @Option(help: "Most calls running at once.") var concurrency: Int?
    @Option(help: "VMMs kept restored and waiting.") var warm: Int?
    @Option(help: "Extra attempts for queued jobs.") var retries: Int?
    @Option(name: .customLong("env"), help: ArgumentHelp("KEY=VALUE; repeatable.", valueName: "KEY=VALUE")) var environment: [String] = []
    @Option(help: "The handler's working directory.") var workdir: String?
    @Argument(parsing: .postTerminator, help: "The handler's argv, after --.") var command: [String] = []

    func run() throws {
        let body: Data
        if let file {
            guard let d = FileManager.default.contents(atPath: file) else { throw ClientFailure("cannot read \(file)") }
            body = d
        } else {
            guard !command.isEmpty else { throw ValidationError("no handler given: swiftlet fn deploy NAME -- CMD [ARGS...] (or --file)") }
            var spec: [String: Any] = ["command": command]
            if let image { spec["image"] = image }
            if let mem { spec["memoryMiB"] = mem }
            if let cpus { spec["vcpus"] = cpus }
            if let timeout { spec["timeoutSeconds"] = timeout }
            if let concurrency { spec["concurrency"] = concurrency }
            if let warm { spec["warm"] = warm }
            if let retries { spec["retries"] = retries }
            if let workdir { spec["workdir"] = workdir }
            if let user { spec["user"] = user }
            var env: [String: String] = [:]
            for e in environment {
                guard let eq = e.firstIndex(of: "="), eq != e.startIndex else { throw ValidationError("--env '\(e)' is not KEY=VALUE") }
                env[String(e[..<eq])] = String(e[e.index(after: eq)...])
            }
            if !env.isEmpty { spec["env"] = env }
            body = try JSONSerialization.data(withJSONObject: spec)
        }
        let f = try client.expectJSON(client.send("PUT", "/v1/functions/\(name)", body: body, headers: ["Content-Type": "application/json"]))
        print("\(name): version \(f["version"] ?? "?")")
    }
}

struct FnList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List functions.")
    @OptionGroup var client: ClientOptions
    @Flag(help: "Print the JSON.") var json = false
    func run() throws {
        let r = try client.expectJSON(client.send("GET", "/v1/functions"))
        if json { return printJSON(r) }
        let fs = r["functions"] as? [[String: Any]] ?? []
        print("NAME\tVERSION\tMEMORY\tVCPUS\tWARM\tCOMMAND")
        for f in fs {
            let cmd = (f["command"] as? [String] ?? []).joined(separator: " ")
            print("\(f["name"] ?? "")\t\(f["version"] ?? "")\t\(f["memoryMiB"] ?? "")\t\(f["vcpus"] ?? "")\t\(f["warm"] ?? "")\t\(cmd)")
        }
    }
}

struct FnShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a function.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws { printJSON(try client.expectJSON(client.send("GET", "/v1/functions/\(name)"))) }
}

struct FnRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a function (its queued jobs are cancelled).")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    func run() throws {
        _ = try client.expectBody(client.send("DELETE", "/v1/functions/\(name)"), status: 204)
        print("\(name): removed")
    }
}

/// `swiftlet invoke NAME < payload`: the function's stdout on stdout, its
/// status as the exit status (1 for a function error without one).
struct Invoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "invoke", abstract: "Invoke a function with stdin as the payload.")
    @OptionGroup var client: ClientOptions
    @Argument var name: String
    @Flag(help: "Queue it as a job and print the job's id.") var async = false
    @Flag(help: "Also print the last 4 KB of the function's log on stderr.") var log = false

    func run() throws {
        let payload = readStdin()
        if async {
            let j = try client.expectJSON(client.send("POST", "/v1/functions/\(name)/jobs", body: payload))
            print(j["id"] as? String ?? "")
            return
        }
        let (status, headers, body) = try client.send("POST", "/2015-03-31/functions/\(name)/invocations", body: payload,
                                                     headers: log ? ["X-Amz-Log-Type": "Tail"] : [:])
        if log, let tail = headers["x-amz-log-result"], let d = Data(base64Encoded: tail) { FileHandle.standardError.write(d) }
        _ = try client.expectBody((status, headers, body), status: 200)
        if headers["x-amz-function-error"] != nil {
            let o = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
            let message = o?["errorMessage"] as? String ?? "function error"
            FileHandle.standardError.write(Data("swiftlet: \(name): \(message)\n".utf8))
            if let range = message.range(of: "status "), let code = Int32(message[range.upperBound...].prefix { $0.isNumber }) { throw ExitCode(code) }
            throw ExitCode(1)
        }
        FileHandle.standardOutput.write(body)
    }
}

struct JobCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "job", abstract: "Show, wait for, cancel a job, or print its output or log.",
                                                    subcommands: [JobShow.self, JobCancel.self, JobOutput.self, JobLog.self], defaultSubcommand: JobShow.self)
}

struct JobShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "A job's state (swiftlet job ID [--wait]).")
    @OptionGroup var client: ClientOptions
    @Argument var id: String
    @Flag(help: "Wait until it is final, showing its state as it changes.") var wait = false
    @Flag(help: "Print the JSON.") var json = false

    func run() throws {
        var job = try client.expectJSON(client.send("GET", "/v1/jobs/\(id)"))
        var last = ""
        while true {
            let state = job["state"] as? String ?? "?"
            if !json && state != last {
                var line = "\(id): \(state)"
                if let a = job["attempts"] as? Int, a > 1 { line += " (attempt \(a))" }
                if let e = job["exitStatus"] as? Int { line += ", exit status \(e)" }
                if let e = job["error"] as? String, ["failed", "timed_out", "cancelled"].contains(state) { line += ": \(e)" }
                print(line)
                last = state
            }
            if !wait || ["succeeded", "failed", "timed_out", "cancelled"].contains(state) { break }
            job = try client.expectJSON(client.send("GET", "/v1/jobs/\(id)?wait=30", timeout: 60))
        }
        if json { printJSON(job) }
        if wait, let state = job["state"] as? String, state != "succeeded" { throw ExitCode(1) }
    }
}

struct JobCancel: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a job.")
    @OptionGroup var client: ClientOptions
    @Argument var id: String
    func run() throws {
        let j = try client.expectJSON(client.send("DELETE", "/v1/jobs/\(id)"))
        print("\(id): \(j["state"] ?? "?")")
    }
}

struct JobOutput: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "output", abstract: "Print a job's output (its stdout).")
    @OptionGroup var client: ClientOptions
    @Argument var id: String
    func run() throws {
        FileHandle.standardOutput.write(try client.expectBody(client.send("GET", "/v1/jobs/\(id)/output")))
    }
}

struct JobLog: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "log", abstract: "Print a job's log (its stderr).")
    @OptionGroup var client: ClientOptions
    @Argument var id: String
    func run() throws {
        FileHandle.standardOutput.write(try client.expectBody(client.send("GET", "/v1/jobs/\(id)/log")))
    }
}
