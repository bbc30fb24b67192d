import SwiftletSys

/// What went wrong turning a user's image into a root drive. Every case says
/// what was refused and where; `swiftlet` prints it as one line (exit 125).
public enum ImageError: Error, Equatable, CustomStringConvertible {
    /// The reference names nothing usable (no such file, unknown format).
    case badReference(String, reason: String)
    /// A system call on the host failed.
    case system(SystemError)
    /// A blob, tar or JSON document could not be read.
    case stream(what: String, StreamError)
    case tar(what: String, TarError)
    case json(what: String, JSONError)
    /// The image's own description is not valid (a required field missing, a bad media type).
    case invalid(what: String, reason: String)
    /// A blob whose bytes do not match its descriptor.
    case digestMismatch(what: String, expected: String, actual: String)
    case sizeMismatch(what: String, expected: UInt64, actual: UInt64)
    /// A blob the image names but does not hold.
    case missingBlob(what: String, digest: String)
    /// The image is for another platform.
    case wrongPlatform(os: String, architecture: String)
    /// `oci:DIR:TAG` names no manifest, or several without a tag to choose.
    case noSuchTag(String, available: [String])
    /// A tar entry that would land outside the root or write through a link.
    case unsafeEntry(layer: String, path: String, reason: String)
    /// An entry the ext4 writer cannot express (a newline in a name).
    case unsupportedEntry(path: String, reason: String)
    /// mkfs.ext4 or debugfs failed.
    case tool(String, reason: String)
    /// `--user` names nobody in the image's /etc/passwd.
    case unknownUser(String)
    case unknownGroup(String)

    public var description: String {
        switch self {
        case let .badReference(ref, reason): return "image \(ref): \(reason)"
        case let .system(e): return "image: \(e)"
        case let .stream(what, e): return "image \(what): \(e)"
        case let .tar(what, e): return "image \(what): \(e)"
        case let .json(what, e): return "image \(what): \(e)"
        case let .invalid(what, reason): return "image \(what): \(reason)"
        case let .digestMismatch(what, expected, actual):
            return "image \(what): digest mismatch: the descriptor says \(expected), the bytes hash to \(actual)"
        case let .sizeMismatch(what, expected, actual):
            return "image \(what): size mismatch: the descriptor says \(expected) bytes, the blob has \(actual)"
        case let .missingBlob(what, digest): return "image \(what): blob \(digest) is missing"
        case let .wrongPlatform(os, arch):
            return "image is for \(os)/\(arch); Swiftlet runs linux/amd64 guests"
        case let .noSuchTag(tag, available):
            let list = available.isEmpty ? "none" : available.joined(separator: ", ")
            return tag.isEmpty ? "image has several manifests and no tag was given (tags: \(list))"
                               : "image has no tag '\(tag)' (tags: \(list))"
        case let .unsafeEntry(layer, path, reason): return "image \(layer): refused entry '\(path)': \(reason)"
        case let .unsupportedEntry(path, reason): return "image entry '\(path)': \(reason)"
        case let .tool(name, reason): return "image: \(name) failed: \(reason)"
        case let .unknownUser(u): return "user '\(u)' is not in the image's /etc/passwd"
        case let .unknownGroup(g): return "group '\(g)' is not in the image's /etc/group"
        }
    }
}
