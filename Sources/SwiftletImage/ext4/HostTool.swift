import Glibc
import SwiftletSys

/// A program of the host (e2fsprogs' mkfs.ext4 and debugfs) run to its end,
/// with stdin and stdout on /dev/null and its stderr collected.
enum HostTool {
    /// The program's path: the sbin directories first, which a non-root
    /// user's PATH often lacks, then PATH.
    static func find(_ name: String) throws(ImageError) -> String {
        var dirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        if let path = getenv("PATH") { dirs += String(cString: path).split(separator: ":").map(String.init) }
        for dir in dirs where access(dir + "/" + name, X_OK) == 0 { return dir + "/" + name }
        throw .tool(name, reason: "not found (install e2fsprogs)")
    }

    /// Runs `argv` (argv[0] a path) and returns its stderr; a non-zero exit
    /// is an error carrying stderr's last line.
    static func run(_ argv: [String], environment extra: [String] = []) throws(ImageError) -> String {
        let name = String(argv[0].split(separator: "/").last ?? "")
        let result: Subprocess.Result
        do { result = try Subprocess.run(path: argv[0], argv: argv, environment: extra) } catch {
            throw .tool(name, reason: String(cString: strerror(error.errno)))
        }
        guard result.status == 0 else { throw .tool(name, reason: result.lastLine) }
        return result.stderr
    }
}
