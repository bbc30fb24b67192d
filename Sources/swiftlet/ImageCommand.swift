import ArgumentParser
import Glibc
import SwiftletImage
import SwiftletSandbox
import SwiftletSys

/// `--image REF`: any Linux root filesystem as the guest's, converted once
/// to a cached ext4 image, and booted through Swiftlet's own initramfs
/// (init and the agent), which mounts it and runs jobs inside it.
enum Images {
    /// `$SWIFTLET_IMAGE_CACHE`, else `images/` in Swiftlet's cache directory.
    static var cacheDirectory: String {
        if let d = getenv("SWIFTLET_IMAGE_CACHE") { return String(cString: d) }
        return Paths.cacheRoot + "/images"
    }

    /// The initramfs that brings the agent to an image (`make rootfs` builds it).
    static var agentInitramfs: String { Paths.cacheRoot + "/default/agent-initramfs.cpio" }

    /// The image `reference` names, converted (or found in the cache).
    static func prepare(_ reference: String) throws(RunFailure) -> PreparedImage {
        do {
            return try ImageCache.prepare(ImageReference.parse(reference), cacheDirectory: cacheDirectory)
        } catch {
            throw RunFailure(message: "\(error)")
        }
    }

    /// What an image changes in a sandbox: its ext4 as the root drive, the
    /// agent's initramfs to boot, and its shell and entrypoint to warm up;
    /// with a network device (set before), the host's name servers.
    static func configure(_ config: inout SandboxConfig, for image: PreparedImage) throws {
        try requireReadable(agentInitramfs, what: "agent initramfs", hint: " (run `make rootfs` first)")
        config.rootfsPath = image.rootfsPath
        config.agentInitramfs = agentInitramfs
        config.warmUpPrograms = image.warmUp
        if config.net != nil { config.nameservers = hostNameservers() }
    }

    /// What the cached snapshot's key and its creation take of an image.
    static func snapshotImage(_ reference: String, _ image: PreparedImage) -> (reference: String, digest: String, initramfs: String) {
        (reference: reference, digest: image.digest, initramfs: agentInitramfs)
    }

    /// The job as the image's configuration makes it: Entrypoint and Cmd
    /// when no command is given; its Env under `--env`; its WorkingDir
    /// unless `--workdir`; its User unless `--user`, resolved in its
    /// /etc/passwd (HOME from there too, unless the environment sets it).
    static func job(_ base: AgentJob, image: PreparedImage, user: String?) throws(RunFailure) -> AgentJob {
        var job = base
        if job.argv.isEmpty { job.argv = image.config.defaultCommand }
        guard !job.argv.isEmpty else { throw RunFailure(message: "no command given, and the image has no Entrypoint or Cmd") }
        func key(_ e: String) -> Substring { e.prefix { $0 != "=" } }
        let overridden = Set(base.environment.map(key))
        job.environment = image.config.environment.filter { !overridden.contains(key($0)) } + base.environment
        if job.workingDirectory.isEmpty { job.workingDirectory = image.config.workingDirectory }
        let spec = user ?? image.config.user
        // Root: the agent's default HOME (/root); a user's comes from the image's passwd.
        guard !spec.isEmpty else { return job }
        let resolved: UserDatabase.Resolved
        do { resolved = try image.users.resolve(spec) } catch { throw RunFailure(message: "\(error)") }
        job.user = AgentJob.Credentials(uid: resolved.uid, gid: resolved.gid, groups: resolved.groups)
        if !job.environment.contains(where: { key($0) == "HOME" }) { job.environment.append("HOME=" + resolved.home) }
        return job
    }

    /// The host's name servers that a guest can reach (not loopback ones).
    static func hostNameservers() -> [String] {
        guard let bytes = try? readFile("/etc/resolv.conf") else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count >= 2, words[0] == "nameserver" else { return nil }
            let address = String(words[1])
            return address.hasPrefix("127.") || address == "::1" ? nil : address
        }
    }
}

/// `--warm PROGRAM`: what the agent's PARK takes (absolute paths, at most 16 in all).
enum WarmUp {
    static func validate(_ programs: [String]) throws {
        guard programs.count <= 12 else { throw ValidationError("at most 12 --warm programs") }
        for p in programs where !p.hasPrefix("/") || p.utf8.contains(0) || p.utf8.count > 4095 {
            throw ValidationError("--warm '\(p)' is not an absolute path")
        }
    }
}

/// `swiftlet image`: the cache of converted images.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Convert user images (OCI layouts, docker save archives, tarballs, directories) to cached ext4 root drives.",
        discussion: "The cache is $SWIFTLET_IMAGE_CACHE, else images/ in Swiftlet's cache directory. Formats: \(ImageReference.formats).",
        subcommands: [ImagePrepare.self, ImagePrune.self]
    )
}

struct ImagePrepare: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare",
        abstract: "Convert an image (or find it in the cache) and print its ext4 image's path."
    )

    @Argument(help: ArgumentHelp("The image.", valueName: "REF"))
    var reference: String

    func run() throws {
        print(try Images.prepare(reference).rootfsPath)
    }
}

struct ImagePrune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Remove converted images not used for a while, and what failed conversions left."
    )

    @Option(help: "Remove the images not used for this many days (0: every image not in use now).")
    var unusedDays: Double = 14

    func validate() throws {
        guard unusedDays >= 0, unusedDays.isFinite else { throw ValidationError("--unused-days must be 0 or more") }
    }

    func run() throws {
        for key in ImageCache.prune(cacheDirectory: Images.cacheDirectory, unusedForDays: unusedDays) { print("removed \(key)") }
    }
}
