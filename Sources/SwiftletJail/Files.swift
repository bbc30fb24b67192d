import Glibc
import SwiftletSys

// Small file helpers over SwiftletSys for the text files of /proc and cgroupfs.

/// The text of `path` (read to EOF: /proc and cgroupfs files have no size).
func readText(_ path: String) throws(JailError) -> String {
    String(decoding: try sys { () throws(SystemError) in try readToEnd(path) }, as: UTF8.self)
}

/// Writes `text` to an existing file at `path` in one write (cgroupfs takes
/// one value per write and rejects a partial one).
func writeText(_ path: String, _ text: String) throws(JailError) {
    let fd: OwnedFD
    do { fd = try OwnedFD(opening: path, flags: O_WRONLY) } catch { throw .system(error) }
    let bytes = Array(text.utf8)
    let raw = fd.raw
    // SAFETY: `bytes` outlives the call, which reads bytes.count bytes of it.
    let n = bytes.withUnsafeBytes { b in retryingEINTR { write(raw, b.baseAddress, b.count) } }
    if n == bytes.count { return }
    // A short write of a cgroupfs value is a rejected value.
    throw .system(SystemError("write(\(path))", errno: n < 0 ? errno : EIO))
}

func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

/// Whether `path` is a directory (not following a final symlink).
func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

/// Whether process `pid` exists (it may belong to another user: EPERM counts).
func processAlive(_ pid: pid_t) -> Bool {
    kill(pid, 0) == 0 || errno == EPERM
}

/// Sleeps `ms` milliseconds (EINTR just shortens it).
func sleepMilliseconds(_ ms: Int) {
    var ts = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    _ = nanosleep(&ts, nil)
}

/// A random lowercase hex suffix for a leaf or directory name.
func randomSuffix() -> String {
    let n = UInt32.random(in: 0...UInt32.max)
    let hex = String(n, radix: 16)
    return String(repeating: "0", count: 8 - hex.count) + hex
}

/// The supervisor pid encoded at the front of a `<pid>-<suffix>` name.
func ownerPid(ofName name: String) -> pid_t? {
    guard let dash = name.firstIndex(of: "-"), let pid = pid_t(name[..<dash]), pid > 0 else { return nil }
    return pid
}

/// Makes `<base>/<owner>-<random>` (mode 0700), `base` first if needed: the
/// naming every per-supervisor directory shares, so that a sweep can tell
/// whose it is.
func makeOwnedDirectory(in base: String, owner: pid_t, baseMode: mode_t) throws(JailError) -> String {
    try sys { () throws(SystemError) in try makeDirectories(base, mode: baseMode) }
    let path = base + "/\(owner)-\(randomSuffix())"
    guard mkdir(path, 0o700) == 0 else { throw .last("mkdir(\(path))") }
    return path
}

/// The `<owner>-<random>` entries of `base` whose owner is dead, for which
/// `remove` succeeds. Returns their paths.
func sweepOwnedEntries(in base: String, remove: (String) -> Bool) -> [String] {
    var removed: [String] = []
    for name in listDirectory(base) {
        let path = base + "/" + name
        guard let owner = ownerPid(ofName: name), !processAlive(owner), remove(path) else { continue }
        removed.append(path)
    }
    return removed
}
