import Glibc

/// The names in the open directory `fd`, without "." and "..", which stays
/// open (a duplicate is read); nil when it cannot be read.
public func directoryNames(_ fd: Int32) -> [String]? {
    guard let copy = try? OwnedFD(at: fd, ".", flags: O_RDONLY | O_DIRECTORY, what: ".") else { return nil }
    guard let stream = fdopendir(copy.raw) else { return nil }
    // The stream owns the descriptor now: closedir closes it.
    _ = copy.release()
    defer { closedir(stream) }
    var names: [String] = []
    while let e = readdir(stream) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// The names in the directory at `path`, without "." and ".."; nil when it cannot be read.
public func directoryNames(atPath path: String) -> [String]? {
    guard let dir = try? OwnedFD(opening: path, flags: O_RDONLY | O_DIRECTORY) else { return nil }
    return directoryNames(dir.raw)
}

/// The names in the directory at `path`, without "." and ".."; empty when it cannot be read.
public func listDirectory(_ path: String) -> [String] { directoryNames(atPath: path) ?? [] }

/// Removes `path` and everything below it, as `rm -rf` does: a symbolic
/// link is removed, never followed. What cannot be removed stays.
public func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    if st.st_mode & S_IFMT == S_IFDIR {
        for name in listDirectory(path) { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}
