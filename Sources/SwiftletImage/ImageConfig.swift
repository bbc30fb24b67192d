/// The part of an OCI image configuration a run uses (image-spec `config.md`):
/// the defaults for the command, its environment, directory and user, and
/// the platform the image is for. Docker's configuration has the same shape.
public struct ImageConfig: Equatable, Sendable {
    public var os = "linux"
    public var architecture = "amd64"
    /// `KEY=VALUE` strings.
    public var environment: [String] = []
    /// "" when the image sets none.
    public var workingDirectory = ""
    /// `name`, `uid`, `name:group` or `uid:gid`; "" means root.
    public var user = ""
    public var entrypoint: [String] = []
    public var command: [String] = []
    /// The uncompressed layers' digests, in order (`rootfs.diff_ids`).
    public var diffIDs: [String] = []

    public init() {}

    /// The configuration of a plain root filesystem (a tarball, a directory, an ext4 image).
    public static let plain = ImageConfig()

    /// Decodes an OCI or Docker image configuration. Fields Swiftlet does
    /// not use are ignored; those it uses must have their documented types.
    public static func parse(_ bytes: [UInt8], what: String) throws(ImageError) -> ImageConfig {
        let json: JSONValue
        do { json = try JSONValue.parse(bytes) } catch { throw .json(what: what, error) }
        guard json.object != nil else { throw .invalid(what: what, reason: "not a JSON object") }
        var c = ImageConfig()
        c.os = try optionalString(json["os"], "os", what) ?? ""
        c.architecture = try optionalString(json["architecture"], "architecture", what) ?? ""
        if let inner = json["config"], inner != .null {
            guard inner.object != nil else { throw .invalid(what: what, reason: "'config' is not an object") }
            c.environment = try strings(inner["Env"], "config.Env", what)
            for e in c.environment where !e.contains("=") || e.hasPrefix("=") {
                throw .invalid(what: what, reason: "config.Env entry '\(e)' is not KEY=VALUE")
            }
            c.workingDirectory = try optionalString(inner["WorkingDir"], "config.WorkingDir", what) ?? ""
            c.user = try optionalString(inner["User"], "config.User", what) ?? ""
            c.entrypoint = try strings(inner["Entrypoint"], "config.Entrypoint", what)
            c.command = try strings(inner["Cmd"], "config.Cmd", what)
        }
        if let rootfs = json["rootfs"], rootfs != .null {
            c.diffIDs = try strings(rootfs["diff_ids"], "rootfs.diff_ids", what)
        }
        return c
    }

    /// Refuses an image that is not for linux/amd64 (an empty field is taken as the default).
    public func checkPlatform() throws(ImageError) {
        let os = self.os.isEmpty ? "linux" : self.os
        let arch = architecture.isEmpty ? "amd64" : architecture
        guard os == "linux", arch == "amd64" else { throw .wrongPlatform(os: os, architecture: arch) }
    }

    /// What runs when the user gives no command: Entrypoint, then Cmd.
    public var defaultCommand: [String] { entrypoint + command }

    private static func optionalString(_ v: JSONValue?, _ field: String, _ what: String) throws(ImageError) -> String? {
        guard let v, v != .null else { return nil }
        guard let s = v.string else { throw .invalid(what: what, reason: "'\(field)' is not a string") }
        return s
    }

    private static func strings(_ v: JSONValue?, _ field: String, _ what: String) throws(ImageError) -> [String] {
        guard let v, v != .null else { return [] }
        guard let items = v.array else { throw .invalid(what: what, reason: "'\(field)' is not an array") }
        var out: [String] = []
        for item in items {
            guard let s = item.string else { throw .invalid(what: what, reason: "'\(field)' has an item that is not a string") }
            out.append(s)
        }
        return out
    }
}
