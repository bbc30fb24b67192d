import Foundation

/// What a user deploys: the handler and the machine it runs in. The JSON
/// field names are the API's (clients and checks rely on them); every
/// field but `command` has a default.
public struct FunctionSpec: Codable, Equatable, Sendable {
    public var command: [String]
    /// "default" (the rootfs `make rootfs` built); an absolute path to an
    /// ext4 image (booted as it is, with its own init and agent), or to any
    /// other image `swiftlet run --image` takes (a directory, a tarball, a
    /// `docker save` archive, an OCI layout); or such a reference with its
    /// format named: `oci:DIR[:TAG]`, `docker-archive:FILE`, `tar:FILE`,
    /// `dir:DIR`, `ext4:FILE`, the path absolute. Every image but "default"
    /// and a plain ext4 path runs as `swiftlet run --image` runs it (through
    /// Swiftlet's agent initramfs; its Env, WorkingDir and User the jobs'
    /// defaults, `env`, `workdir` and `user` overriding them); all but
    /// `ext4:` are converted to ext4 at deploy (`swiftlet image prepare`, cached).
    public var image: String
    public var env: [String: String]
    public var workdir: String?
    /// With an image run through `--image`: the user the handler runs as, a
    /// name or uid of the image's (optionally `:group`): `swiftlet run --user`.
    public var user: String?
    public var memoryMiB: Int
    public var vcpus: Int
    public var timeoutSeconds: Double
    /// The most invocations of this function running at once.
    public var concurrency: Int
    /// VMMs kept restored and waiting (the warm pool).
    public var warm: Int
    /// Extra attempts for a queued job after an infrastructure failure or a restart.
    public var retries: Int
    /// Set by `deploy`, never by a request: the image (a path without a
    /// format prefix) is not an ext4 image, so it was converted and its jobs
    /// run with `--image`. Kept in the version's stored spec, so that every
    /// job and every host of a fleet treat the image as the deploy found it.
    /// nil (not encoded) otherwise, so that other specs' stored text is as before.
    public var imageConverted: Bool?

    public static let defaultImage = "default"
    static let fields: Set<String> = ["command", "image", "env", "workdir", "user", "memoryMiB", "vcpus", "timeoutSeconds",
                                      "concurrency", "warm", "retries"]
    /// The prefixes that name an image's format (`swiftlet run --image`).
    public static let imagePrefixes = ["oci:", "docker-archive:", "tar:", "dir:", "ext4:"]

    public init(command: [String], image: String = FunctionSpec.defaultImage, env: [String: String] = [:], workdir: String? = nil,
                user: String? = nil, memoryMiB: Int = 128, vcpus: Int = 1, timeoutSeconds: Double = 60, concurrency: Int = 4, warm: Int = 0,
                retries: Int = 2) {
        (self.command, self.image, self.env, self.workdir, self.user) = (command, image, env, workdir, user)
        (self.memoryMiB, self.vcpus, self.timeoutSeconds) = (memoryMiB, vcpus, timeoutSeconds)
        (self.concurrency, self.warm, self.retries) = (concurrency, warm, retries)
    }

    /// What `image` names, from its text alone.
    public enum ImageKind: Equatable, Sendable {
        /// "default": the built rootfs, booted as it is.
        case builtIn
        /// `ext4:FILE`: an ext4 image used in place (not converted), run
        /// through `--image` like the others.
        case ext4(path: String)
        /// `oci:`, `docker-archive:`, `tar:`, `dir:`: converted at deploy, run through `--image`.
        case reference
        /// An absolute path: ext4 (booted as it is) or anything else
        /// (converted, run through `--image`), which only the file says
        /// (`imageConverted`, once deployed).
        case path(String)
    }

    public var imageKind: ImageKind {
        if image == Self.defaultImage { return .builtIn }
        if image.hasPrefix("ext4:") { return .ext4(path: String(image.dropFirst(5))) }
        if Self.imagePrefixes.contains(where: { image.hasPrefix($0) }) { return .reference }
        return .path(image)
    }

    /// The host path the image is read from (an OCI layout's directory
    /// without its tag); nil for "default".
    public var imageHostPath: String? {
        switch imageKind {
        case .builtIn: return nil
        case let .ext4(path), let .path(path): return path
        case .reference:
            guard let colon = image.firstIndex(of: ":") else { return nil }
            var path = String(image[image.index(after: colon)...])
            // `oci:DIR:TAG`: the tag follows the last ':' after the last '/'.
            if image.hasPrefix("oci:"), let c = path.lastIndex(of: ":"), !path[c...].contains("/") { path = String(path[..<c]) }
            return path
        }
    }

    /// What `swiftlet snapshot create|run --image` take for this function's
    /// jobs: the image as given; nil when they boot an ext4 root drive as it
    /// is (`--rootfs`: the default rootfs, a plain path to an ext4 image).
    public var imageReference: String? {
        switch imageKind {
        case .reference, .ext4: return image
        case .path: return imageConverted == true ? image : nil
        case .builtIn: return nil
        }
    }

    /// Decodes a request body strictly: a JSON object with only the known
    /// fields, each of its type, then `validate`. The error names the field.
    public static func decode(_ body: [UInt8]) throws(RunnerError) -> FunctionSpec {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) } catch {
            throw .badRequest("the body is not valid JSON")
        }
        guard let dict = object as? [String: Any] else { throw .badRequest("the body must be a JSON object") }
        if let unknown = dict.keys.sorted().first(where: { !fields.contains($0) }) {
            throw .badRequest("unknown field '\(unknown)' (known: \(fields.sorted().joined(separator: ", ")))")
        }
        // A field is given a value or left out: null is not "the default".
        if let null = dict.keys.sorted().first(where: { dict[$0] is NSNull }) { throw .badRequest("'\(null)' must not be null") }
        let wire: Wire
        do { wire = try JSONDecoder().decode(Wire.self, from: Data(body)) } catch let DecodingError.typeMismatch(_, context) {
            throw .badRequest("'\(fieldName(context))' has the wrong type")
        } catch let DecodingError.dataCorrupted(context) {
            throw .badRequest("'\(fieldName(context))' is not a valid value: \(context.debugDescription)")
        } catch let DecodingError.valueNotFound(_, context) {
            throw .badRequest("'\(fieldName(context))' must not be null")
        } catch {
            throw .badRequest("the body is not a valid function spec")
        }
        guard let command = wire.command else {
            throw .badRequest("'command' is required: the handler's argv, e.g. [\"sh\", \"-c\", \"cat\"]")
        }
        /// Integers arrive as numbers (so that 1.5 is refused by name, not by JSONDecoder's words).
        func integer(_ v: Double?, _ name: String) throws(RunnerError) -> Int? {
            guard let v else { return nil }
            guard v.isFinite, v == v.rounded(), abs(v) < 1e9 else { throw .badRequest("'\(name)' must be an integer") }
            return Int(v)
        }
        var spec = FunctionSpec(command: command, env: wire.env ?? [:], workdir: wire.workdir, user: wire.user)
        if let v = wire.image { spec.image = v }
        if let v = try integer(wire.memoryMiB, "memoryMiB") { spec.memoryMiB = v }
        if let v = try integer(wire.vcpus, "vcpus") { spec.vcpus = v }
        if let v = wire.timeoutSeconds { spec.timeoutSeconds = v }
        if let v = try integer(wire.concurrency, "concurrency") { spec.concurrency = v }
        if let v = try integer(wire.warm, "warm") { spec.warm = v }
        if let v = try integer(wire.retries, "retries") { spec.retries = v }
        try spec.validate()
        return spec
    }

    /// The body's fields, each optional, typed: JSONDecoder refuses `true`
    /// or a string for a number.
    private struct Wire: Decodable {
        var command: [String]?
        var image: String?
        var env: [String: String]?
        var workdir: String?
        var user: String?
        var memoryMiB: Double?
        var vcpus: Double?
        var timeoutSeconds: Double?
        var concurrency: Double?
        var warm: Double?
        var retries: Double?
    }

    private static func fieldName(_ context: DecodingError.Context) -> String {
        context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    /// The limits, each with a message that names the field.
    public func validate() throws(RunnerError) {
        guard !command.isEmpty, command.count <= 256 else { throw .badRequest("'command' must have 1 to 256 elements") }
        guard command.allSatisfy({ !$0.isEmpty && !$0.utf8.contains(0) }) else {
            throw .badRequest("'command' elements must be non-empty and hold no NUL")
        }
        guard command.reduce(0, { $0 + $1.utf8.count }) <= 65536 else { throw .badRequest("'command' is over 64 KiB") }
        guard Self.isValidImage(image) else {
            throw .badRequest("'image' must be \"default\", an absolute path, or oci:, docker-archive:, tar:, dir: or ext4: followed by an absolute path")
        }
        guard env.count <= 128 else { throw .badRequest("'env' has more than 128 entries") }
        for (k, v) in env {
            guard Self.isEnvironmentName(k) else { throw .badRequest("'env' key '\(k)' is not a valid variable name") }
            guard !v.utf8.contains(0), v.utf8.count <= 32768 else { throw .badRequest("'env.\(k)' holds a NUL or is over 32 KiB") }
        }
        if let w = workdir { guard w.hasPrefix("/"), !w.utf8.contains(0) else { throw .badRequest("'workdir' must be an absolute path") } }
        if let u = user {
            guard Self.isValidUser(u) else { throw .badRequest("'user' must be a user of the image: a name or uid, optionally :group") }
            // A plain path's deploy checks that it is not an ext4 image booted as it is.
            guard imageKind != .builtIn else {
                throw .badRequest("'user' needs an image other than \"default\" (it is looked up in the image's /etc/passwd)")
            }
        }
        guard (32...16384).contains(memoryMiB) else { throw .badRequest("'memoryMiB' must be 32 to 16384") }
        guard (1...32).contains(vcpus) else { throw .badRequest("'vcpus' must be 1 to 32") }
        guard timeoutSeconds.isFinite, timeoutSeconds > 0, timeoutSeconds <= 3600 else {
            throw .badRequest("'timeoutSeconds' must be more than 0 and at most 3600")
        }
        guard (1...1024).contains(concurrency) else { throw .badRequest("'concurrency' must be 1 to 1024") }
        guard (0...64).contains(warm) else { throw .badRequest("'warm' must be 0 to 64") }
        guard (0...10).contains(retries) else { throw .badRequest("'retries' must be 0 to 10") }
    }

    /// "default", an absolute path, or a format prefix and an absolute path
    /// (`oci:/dir:tag` included): what `swiftlet run --image` would take
    /// whatever the current directory.
    static func isValidImage(_ s: String) -> Bool {
        if s == defaultImage { return true }
        guard !s.utf8.contains(0), s.unicodeScalars.count <= 4096 else { return false }
        let path = imagePrefixes.first(where: { s.hasPrefix($0) }).map { s.dropFirst($0.count) } ?? Substring(s)
        return path.hasPrefix("/")
    }

    /// `name`, `uid`, `name:group` or `uid:gid`: no NUL or line break, at
    /// most one ':', at most 256 characters (code points, as JSON Schema counts).
    static func isValidUser(_ s: String) -> Bool {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        return (1...2).contains(parts.count) && parts.allSatisfy { !$0.isEmpty } && s.unicodeScalars.count <= 256
            && !s.utf8.contains(where: { $0 == 0 || $0 == UInt8(ascii: "\n") })
    }

    static func isEnvironmentName(_ s: String) -> Bool {
        guard let first = s.utf8.first, first == UInt8(ascii: "_") || isLetter(first), s.utf8.count <= 256 else { return false }
        return s.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isLetter($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    private static func isLetter(_ c: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
    }

    /// A function name: what Lambda allows (letters, digits, '-', '_'), 1 to 64 long.
    public static func isValidName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy {
            $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || isLetter($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
        }
    }
}

/// A deployed function: its current version's spec and what identifies the version.
public struct FunctionRecord: Codable, Equatable, Sendable {
    public var name: String
    public var version: Int
    public var spec: FunctionSpec
    /// SHA-256 of the root image when the version was made (snapshots check it again).
    public var imageSha256: String
    /// The image path resolved ("default" becomes the built rootfs; a
    /// converted image, the ext4 image `swiftlet image prepare` made on the
    /// host that deployed it).
    public var imagePath: String
    public var createdAt: Date
    public var updatedAt: Date
}
