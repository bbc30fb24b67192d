import Glibc
import SwiftletSys
import SwiftletX86

/// A `docker save` archive: a tar holding `manifest.json` (the images, each
/// with its configuration's and layers' paths), the configuration (named by
/// its digest) and the layers (uncompressed tars, whose digests are the
/// configuration's `rootfs.diff_ids`). Older Docker writes `<id>/layer.tar`,
/// newer `blobs/sha256/<hex>`; both are read by name.
struct DockerArchive {
    let path: String

    /// Unpacks the archive's one image into `tree`. The first pass hashes
    /// every member; then each layer, already checked, is applied in order
    /// by a pass of its own (a tar has no index to seek with).
    func unpack(into tree: StagingTree) throws(ImageError) -> ImageConfig {
        let archive = try openArchive()
        var digests: [String: String] = [:]
        var documents: [String: [UInt8]] = [:]
        var reader = TarReader(FileSource(fd: archive.raw))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while let entry = try next(&reader) {
            guard entry.kind == .file else { continue }
            let name = try normalized(entry.path)
            var sha = SHA256()
            var small: [UInt8] = []
            let keep = name.hasSuffix(".json") && entry.size <= UInt64(Blob.maxDocumentBytes)
            while true {
                let n: Int
                do { n = try reader.readData(into: buffer) } catch { throw .tar(what: path, error) }
                if n == 0 { break }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                sha.update(chunk)
                if keep { small.append(contentsOf: chunk) }
            }
            digests[name] = SHA256.hex(sha.finalize())
            if keep { documents[name] = small }
        }

        guard let manifestBytes = documents["manifest.json"] else { throw .invalid(what: path, reason: "no manifest.json (not a docker save archive)") }
        let manifest: JSONValue
        do { manifest = try JSONValue.parse(manifestBytes) } catch { throw .json(what: "manifest.json", error) }
        guard let images = manifest.array, let image = images.first else { throw .invalid(what: "manifest.json", reason: "it lists no image") }
        guard images.count == 1 else { throw .invalid(what: "manifest.json", reason: "it holds \(images.count) images; save one") }
        guard let configName = image["Config"]?.string.map({ try? normalized($0) }) ?? nil,
              let configBytes = documents[configName] else { throw .invalid(what: "manifest.json", reason: "its Config is not in the archive") }
        // The configuration is named by its digest: check it.
        let configHex = String(configName.split(separator: "/").last ?? "").replacingOccurrences(of: ".json", with: "")
        if configHex.utf8.count == 64, digests[configName] != configHex {
            throw .digestMismatch(what: configName, expected: "sha256:" + configHex, actual: "sha256:" + (digests[configName] ?? ""))
        }
        let config = try ImageConfig.parse(configBytes, what: configName)
        try config.checkPlatform()
        guard let layerPaths = image["Layers"]?.array else { throw .invalid(what: "manifest.json", reason: "no Layers") }
        guard layerPaths.count == config.diffIDs.count else {
            throw .invalid(what: configName, reason: "\(config.diffIDs.count) diff_ids for \(layerPaths.count) layers")
        }
        var layers: [String] = []
        for (i, p) in layerPaths.enumerated() {
            guard let s = p.string else { throw .invalid(what: "manifest.json", reason: "a layer path is not a string") }
            let name = try normalized(s)
            let expected = try Descriptor.hexDigest(config.diffIDs[i], what: configName)
            guard let actual = digests[name] else { throw .missingBlob(what: "layer " + name, digest: config.diffIDs[i]) }
            guard actual == expected else { throw .digestMismatch(what: "layer " + name, expected: "sha256:" + expected, actual: "sha256:" + actual) }
            layers.append(name)
        }
        for name in layers { try applyMember(name, to: tree) }
        return config
    }

    private func openArchive() throws(ImageError) -> OwnedFD {
        do { return try OwnedFD(opening: path, flags: O_RDONLY) } catch {
            throw .badReference(path, reason: String(cString: strerror(error.errno)))
        }
    }

    private func next(_ reader: inout TarReader<FileSource>) throws(ImageError) -> TarEntry? {
        do { return try reader.next() } catch { throw .tar(what: path, error) }
    }

    /// A member's name as manifest.json writes it ("./a" and "a" alike).
    private func normalized(_ name: String) throws(ImageError) -> String {
        try StagingTree.components(name, layer: path).joined(separator: "/")
    }

    /// Applies the layer stored as member `name`.
    private func applyMember(_ name: String, to tree: StagingTree) throws(ImageError) {
        let archive = try openArchive()
        var reader = TarReader(FileSource(fd: archive.raw))
        while let entry = try next(&reader) {
            guard entry.kind == .file, try normalized(entry.path) == name else { continue }
            try applyLayer(TarMemberSource(reader: reader), to: tree, layer: "layer " + name, whiteouts: true)
            return
        }
        throw .missingBlob(what: "layer " + name, digest: name)
    }
}

/// The data of a tar member, as a byte source (a layer inside an archive).
struct TarMemberSource<S: ByteSource>: ByteSource {
    var reader: TarReader<S>

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        do { return try reader.readData(into: buffer) } catch {
            if case let .stream(e) = error { throw e }
            throw .corrupt("\(error)")
        }
    }
}
