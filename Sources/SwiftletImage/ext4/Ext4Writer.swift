import Glibc
import SwiftletSys
import SwiftletX86

/// Writes a staged tree as an ext4 image, without privileges: `mkfs.ext4 -d`
/// copies the names and data (Debian 12's e2fsprogs 1.47.0 takes a
/// directory, not a tarball), then one debugfs script sets what an
/// unprivileged staging directory cannot hold: owners, modes with setuid
/// bits, device nodes, FIFOs and xattrs. So root and non-root users get the
/// same image, and no root is needed.
///
/// The image is reproducible: the same key gives the same bytes (a UUID and
/// directory hash seed derived from the key, e2fsprogs' clock fixed, every
/// inode's times set from the image), so hosts of a fleet that convert one
/// image each get the file the others verified.
enum Ext4Writer {
    /// Free space left for the job's writes (they go to the ephemeral layer,
    /// but the filesystem must have the room), beyond the tree itself.
    static let headroomBytes: UInt64 = 256 << 20

    static func write(_ tree: StagingTree, to output: String, workDirectory: String, key: String) throws(ImageError) {
        try format(tree.path, to: output, key: key, usedBytes: tree.estimatedBytes, entries: tree.entries.count)
        let script = workDirectory + "/debugfs.script"
        let commands = try debugfsScript(tree, workDirectory: workDirectory)
        try writeFile(script, Array(commands.utf8))
        let debugfs = try HostTool.find("debugfs")
        let stderr = try HostTool.run([debugfs, "-w", "-f", script, output], environment: fixedClock)
        // debugfs exits 0 whatever its commands did: any line but its banner is a failed command.
        for line in stderr.split(separator: "\n") where !line.hasPrefix("debugfs ") {
            throw .tool("debugfs", reason: String(line))
        }
    }

    /// e2fsprogs' clock, for the superblock's and new inodes' times (its own test hook, honoured by mkfs and debugfs).
    /// (Not 0, which e2fsprogs reads as "unset"; 2000-01-01.)
    static let fixedClock = ["E2FSPROGS_FAKE_TIME=946684800"]

    /// `mkfs.ext4 -d source`, sized for `usedBytes` and `entries` plus room:
    /// no journal (the drive is always ephemeral, so nothing is ever
    /// replayed; a journal only costs space and a mount), no reserved
    /// blocks, and the UUID and hash seed taken from the key.
    /// `rootOwnedByRoot`: the root directory root's (a staged tree's is the
    /// staging user's), else the source's own (a host directory's).
    static func format(_ source: String, to output: String, key: String, usedBytes: UInt64, entries: Int,
                       rootOwnedByRoot: Bool = true) throws(ImageError) {
        let sizeMiB = (usedBytes + usedBytes / 4 + headroomBytes + (1 << 20) - 1) >> 20
        let inodes = entries + entries / 2 + 4096
        let h = Array(SHA256.hex(SHA256.hash(Array(("swiftlet-image " + key).utf8))).prefix(32))
        let uuid = [h[0..<8], h[8..<12], h[12..<16], h[16..<20], h[20..<32]].map { String($0) }.joined(separator: "-")
        let mkfs = try HostTool.find("mkfs.ext4")
        _ = try HostTool.run([mkfs, "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-b", "4096", "-N", String(inodes),
                              "-U", uuid, "-E", (rootOwnedByRoot ? "root_owner=0:0," : "") + "hash_seed=" + uuid,
                              "-L", "swiftlet-image", "-d", source, output, "\(sizeMiB)M"],
                             environment: fixedClock)
    }

    /// The commands that give each entry its owner, mode, node type, times and xattrs.
    static func debugfsScript(_ tree: StagingTree, workDirectory: String) throws(ImageError) -> String {
        var out = ""
        var xattrFiles = 0
        // Parents before children: a device node is made in its directory with `cd`.
        for rel in tree.entries.keys.sorted() {
            guard let meta = tree.entries[rel] else { continue }
            let path = quote("/" + rel)
            switch meta.kind {
            case let .characterDevice(major, minor), let .blockDevice(major, minor):
                let type = meta.kind == .characterDevice(major: major, minor: minor) ? "c" : "b"
                try makeNode(rel, "\(type) \(major) \(minor)", into: &out)
            case .fifo:
                try makeNode(rel, "p", into: &out)
            default: break
            }
            if meta.kind != .symlink { out += "sif \(path) mode 0\(String(meta.kind.typeBits | meta.mode, radix: 8))\n" }
            out += "sif \(path) uid \(meta.uid)\nsif \(path) gid \(meta.gid)\n"
            // All four: mkfs copied the staging files' times, which are when they were written.
            let t = "@\(max(0, meta.modificationTime))"
            out += "sif \(path) mtime \(t)\nsif \(path) atime \(t)\nsif \(path) ctime \(t)\nsif \(path) crtime \(t)\n"
            for x in meta.xattrs {
                // The value goes through a file: it may hold any byte.
                let file = workDirectory + "/xattr-\(xattrFiles)"
                xattrFiles += 1
                try writeFile(file, x.value)
                guard !x.name.contains("\n"), !x.name.isEmpty else { throw .unsupportedEntry(path: rel, reason: "an xattr name with a line break") }
                out += "ea_set -f \(quote(file)) \(path) \(quote(x.name))\n"
            }
        }
        return out
    }

    private static func makeNode(_ rel: String, _ spec: String, into out: inout String) throws(ImageError) {
        let parts = rel.split(separator: "/").map(String.init)
        guard let name = parts.last else { throw .unsupportedEntry(path: rel, reason: "the root cannot be a device") }
        out += "rm \(quote("/" + rel))\n"
        out += "cd \(quote("/" + parts.dropLast().joined(separator: "/")))\n"
        out += "mknod \(quote(name)) \(spec)\n"
        out += "cd /\n"
    }

    /// debugfs's quoting: inside double quotes, a double quote is doubled.
    static func quote(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

extension String {
    /// Foundation's, which this module does not import.
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        guard !target.isEmpty, contains(target) else { return self }
        var out = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            out += rest[..<range.lowerBound]
            out += replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }
}
