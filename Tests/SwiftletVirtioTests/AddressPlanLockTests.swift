import Glibc
import SwiftletSys
@testable import SwiftletVirtio
import Testing

/// `--net auto`'s lock across Swiftlet processes (address choice and
/// assignment are one step). It was a bound abstract socket name, which any
/// local user could bind first: every `--net auto` then waited 10 s and went
/// on unlocked. It is an flock on a file only its owner can reach.
@Suite struct AddressPlanLockTests {
    static func tempDir() throws -> String {
        var template = Array("/tmp/swiftlet-lock-XXXXXX".utf8CString)
        try #require(mkdtemp(&template) != nil)
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The held lock's descriptor (the caller closes it to release), or -1.
    static func take(_ path: String, waitMillis: Int = 0) -> Int32 {
        guard let lock = AddressPlanLock.acquire(path: path, waitMillis: waitMillis) else { return -1 }
        return lock.release()
    }

    @Test func exclusiveAndReleasedWithItsDescriptor() throws {
        let dir = try Self.tempDir()
        let path = dir + "/lock"
        defer { unlink(path); rmdir(dir) }
        let held = Self.take(path)
        #expect(held >= 0)
        #expect(Self.take(path, waitMillis: 20) == -1, "a second holder waits, then goes on without it")
        close(held)
        let again = Self.take(path)
        #expect(again >= 0, "closing the descriptor releases it")
        close(again)
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o777 == 0o600 && st.st_uid == geteuid())
    }

    @Test func anotherUsersNameSquatChangesNothing() throws {
        let dir = try Self.tempDir()
        let path = dir + "/lock"
        defer { unlink(path); rmdir(dir) }
        // What any local user could do to the old lock: bind its name first.
        let squatter = try UnixSocket.make()
        let bound = try UnixSocket.withAddress("@swiftlet-net-address-plan") { bind(squatter.raw, $0, $1) }
        #expect(bound == 0 || errno == EADDRINUSE)
        let held = Self.take(path)
        #expect(held >= 0)
        close(held)
    }

    @Test func untrustedFilesAreRefused() throws {
        let dir = try Self.tempDir()
        defer { rmdir(dir) }
        // A file others may write, and a symbolic link, are not the lock.
        let open = dir + "/open"
        close(Glibc.open(open, O_CREAT | O_WRONLY, 0o600))
        chmod(open, 0o666)
        defer { unlink(open) }
        #expect(Self.take(open) == -1)
        let link = dir + "/link"
        symlink(open, link)
        defer { unlink(link) }
        #expect(Self.take(link) == -1)
        // A directory others may write is not trusted either.
        chmod(dir, 0o777)
        #expect(Self.take(dir + "/lock") == -1)
    }
}
