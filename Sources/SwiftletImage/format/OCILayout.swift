import Glibc
import SwiftletSys

/// An OCI image layout directory (image-spec `image-layout.md`), as skopeo
/// and umoci write it: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
struct OCILayout: ~Copyable {
    let path: String
    private let dir: OwnedFD

    init(path: String) throws(ImageError) {
        let d: OwnedFD
        do { d = try OwnedFD(opening: path, flags: O_RDONLY | O_DIRECTORY) } catch {
            throw .badReference("oci:" + path, reason: String(cString: strerror(error.errno)))
        }
        let marker = try Blob.readDocument(at: d.raw, "oci-layout", what: "oci-layout")
        let json: JSONValue
        do { json = try JSONValue.parse(marker) } catch { throw .json(what: "oci-layout", error) }
        guard json["imageLayoutVersion"]?.string != nil else { throw .invalid(what: "oci-layout", reason: "no imageLayoutVersion") }
        dir = d
        self.path = path
    }

    /// The manifest `tag` names (nil: the only one, else `latest`), through
    /// an image index to its linux/amd64 entry when it names one.
    func manifest(tag: String?) throws(ImageError) -> Descriptor {
        let index = try parse(Blob.readDocument(at: dir.raw, "index.json", what: "index.json"), what: "index.json")
        let candidates = try descriptors(index["manifests"], what: "index.json")
        let tags = candidates.compactMap(\.refName)
        var chosen: Descriptor
        if let tag {
            guard let d = candidates.last(where: { $0.refName == tag }) else { throw .noSuchTag(tag, available: tags) }
            chosen = d
        } else if candidates.count == 1 {
            chosen = candidates[0]
        } else if let d = candidates.last(where: { $0.refName == "latest" }) {
            chosen = d
        } else {
            throw candidates.isEmpty ? .invalid(what: "index.json", reason: "it lists no manifest") : .noSuchTag("", available: tags)
        }
        // A nested index (a multi-platform image): its linux/amd64 manifest.
        for _ in 0..<4 where Self.isIndex(chosen.mediaType) {
            let nested = try parse(document(chosen, what: "index " + chosen.digest), what: "index " + chosen.digest)
            let entries = try descriptors(nested["manifests"], what: "index " + chosen.digest)
            guard let d = entries.first(where: { $0.platform?.os == "linux" && $0.platform?.architecture == "amd64" }) else {
                let p = entries.first?.platform
                throw .wrongPlatform(os: p?.os ?? "unknown", architecture: p?.architecture ?? "unknown")
            }
            chosen = d
        }
        return chosen
    }

    /// Unpacks the image `manifest` describes into `tree`, each blob checked
    /// against its descriptor before a byte of it is parsed.
    func unpack(_ manifest: Descriptor, into tree: StagingTree) throws(ImageError) -> ImageConfig {
        let what = "manifest " + manifest.digest
        let m = try parse(document(manifest, what: what), what: what)
        guard let configJSON = m["config"] else { throw .invalid(what: what, reason: "no config") }
        let configDescriptor = try Descriptor.parse(configJSON, what: what)
        let config = try ImageConfig.parse(document(configDescriptor, what: "config " + configDescriptor.digest),
                                           what: "config " + configDescriptor.digest)
        try config.checkPlatform()
        for layer in try descriptors(m["layers"], what: what) {
            let name = "layer " + layer.digest
            guard Self.isLayer(layer.mediaType) else { throw .invalid(what: name, reason: "media type '\(layer.mediaType)' is not a layer Swiftlet can read") }
            let blob = try openBlob(layer, what: name)
            try Blob.verify(blob.raw, against: layer, what: name)
            guard lseek(blob.raw, 0, SEEK_SET) == 0 else { throw .system(.last("lseek(\(name))")) }
            try applyLayer(FileSource(fd: blob.raw), to: tree, layer: name, whiteouts: true)
        }
        return config
    }

    // MARK: - Blobs

    private func openBlob(_ d: Descriptor, what: String) throws(ImageError) -> OwnedFD {
        let fd = openat(dir.raw, "blobs/sha256/" + d.hex, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT { throw .missingBlob(what: what, digest: d.digest) }
            throw .system(.last("open(\(what))"))
        }
        return OwnedFD(taking: fd)
    }

    /// A small blob (a manifest, index or configuration), checked.
    private func document(_ d: Descriptor, what: String) throws(ImageError) -> [UInt8] {
        guard d.size <= UInt64(Blob.maxDocumentBytes) else { throw .invalid(what: what, reason: "larger than \(Blob.maxDocumentBytes >> 20) MiB") }
        let blob = try openBlob(d, what: what)
        try Blob.verify(blob.raw, against: d, what: what)
        return try Blob.readDocument(blob.raw, what: what)
    }

    private func parse(_ bytes: [UInt8], what: String) throws(ImageError) -> JSONValue {
        do { return try JSONValue.parse(bytes) } catch { throw .json(what: what, error) }
    }

    private func descriptors(_ json: JSONValue?, what: String) throws(ImageError) -> [Descriptor] {
        guard let items = json?.array else { throw .invalid(what: what, reason: "no list of descriptors") }
        var out: [Descriptor] = []
        for item in items { out.append(try Descriptor.parse(item, what: what)) }
        return out
    }

    static func isIndex(_ mediaType: String) -> Bool {
        mediaType == "application/vnd.oci.image.index.v1+json" || mediaType == "application/vnd.docker.distribution.manifest.list.v2+json"
    }

    /// Tar layers, plain, gzip or zstd (the bytes say which), OCI's or Docker's names.
    static func isLayer(_ mediaType: String) -> Bool {
        mediaType.hasPrefix("application/vnd.oci.image.layer.v1.tar") && !mediaType.hasSuffix("+encrypted")
            || mediaType.hasPrefix("application/vnd.oci.image.layer.nondistributable.v1.tar")
            || mediaType == "application/vnd.docker.image.rootfs.diff.tar.gzip"
            || mediaType == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    }
}
