import CSwiftlet
import Glibc
import Synchronization
import Testing
import SwiftletSys

/// `retryingEINTR`, the one place EINTR is handled, and `EventFD`.
@Suite(.serialized) struct EINTRTests {
    final class Progress: Sendable {
        let done = Atomic<Bool>(false)
        let reads = Atomic<Int>(0)
    }

    /// Interrupts `target` with SIGUSR2 (an empty handler without SA_RESTART, so
    /// a blocking read returns EINTR) every 5 ms while `keepGoing` holds, for
    /// at most 5 s; then writes one byte to `fd` unless `done` was raised (so
    /// a read is never left blocked, even when the signals did not reach it).
    private static func interrupter(_ target: pthread_t, progress: Progress, writeTo fd: Int32?,
                                    while keepGoing: @escaping @Sendable (Progress) -> Bool) throws -> pthread_t {
        try spawnThread(name: "interrupter") {
            for _ in 0..<1000 where keepGoing(progress) {
                pthread_kill(target, SIGUSR2)
                usleep(5_000)
            }
            if let fd, !progress.done.load(ordering: .acquiring) {
                var byte: UInt8 = 42
                _ = write(fd, &byte, 1)
            }
        }
    }

    /// What the reading thread saw.
    final class Outcome: @unchecked Sendable {
        // Written by the reader before the join, read after it.
        var plain = 0, plainErrno: Int32 = 0, retried = 0, byte: UInt8 = 0
    }

    @Test func aBlockingReadInterruptedBySignalsIsRetriedUntilItReads() throws {
        #expect(swl_install_empty_handler(SIGUSR2) == 0)
        var p: [Int32] = [-1, -1]
        #expect(pipe(&p) == 0)
        defer { close(p[0]); close(p[1]) }
        let (readEnd, writeEnd) = (p[0], p[1])
        let outcome = Outcome()
        let control = Progress(), retried = Progress()
        // A thread of its own with SIGUSR2 unblocked: the test runner's threads block it.
        let reader = try spawnThread(name: "eintr-reader") {
            _ = swl_unblock_signal(SIGUSR2)
            let me = pthread_self()
            var byte: UInt8 = 0
            // Control: the same signals make a plain read fail with EINTR.
            guard let first = try? Self.interrupter(me, progress: control, writeTo: writeEnd, while: { !$0.done.load(ordering: .acquiring) }) else { return }
            outcome.plain = read(readEnd, &byte, 1)
            outcome.plainErrno = errno
            control.done.store(true, ordering: .releasing)
            pthread_join(first, nil)
            // The byte is written only once the read has been interrupted twice.
            guard let second = try? Self.interrupter(me, progress: retried, writeTo: writeEnd, while: { $0.reads.load(ordering: .acquiring) < 3 }) else { return }
            outcome.retried = retryingEINTR { () -> Int in
                retried.reads.add(1, ordering: .acquiringAndReleasing)
                return read(readEnd, &byte, 1)
            }
            outcome.byte = byte
            pthread_join(second, nil)
        }
        pthread_join(reader, nil)
        #expect(outcome.plain == -1 && outcome.plainErrno == EINTR)
        #expect(outcome.retried == 1 && outcome.byte == 42)
        #expect(retried.reads.load(ordering: .acquiring) >= 3)
    }

    @Test func anErrorOtherThanEINTRIsReturnedWithItsErrno() {
        var byte: UInt8 = 0
        let n = retryingEINTR { read(-1, &byte, 1) }
        #expect(n == -1 && errno == EBADF)
    }

    @Test func theThrowingVariantNamesTheCallAndErrno() {
        var byte: UInt8 = 0
        #expect(throws: SystemError("read(nowhere)", errno: EBADF)) {
            _ = try retryingEINTR("read(nowhere)") { read(-1, &byte, 1) }
        }
    }

    @Test func anEventFDCountsSignalsUntilDrained() throws {
        let event = try EventFD()
        #expect(!event.drain())
        event.signal()
        event.signal()
        var value: UInt64 = 0
        #expect(read(event.fd, &value, 8) == 8 && value == 2)
        #expect(!event.drain())
        event.signal()
        #expect(event.drain())
        #expect(!event.drain())
        #expect(fcntl(event.fd, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(event.fd, F_GETFL) & O_NONBLOCK != 0)
    }
}
