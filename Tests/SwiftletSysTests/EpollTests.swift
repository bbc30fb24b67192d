import CSwiftlet
import Glibc
import Testing
import SwiftletSys

@Suite struct EpollTests {
    @Test func readinessComesBackWithItsTagUntilRemoved() throws {
        let epoll = try Epoll()
        var p: [Int32] = [-1, -1]
        #expect(swl_pipe2(&p, O_NONBLOCK | O_CLOEXEC) == 0)
        defer { close(p[0]); close(p[1]) }
        var events = [UInt32](repeating: 0, count: 4)
        var tags = [UInt64](repeating: 0, count: 4)

        try epoll.add(p[0], tag: 7)
        #expect(epoll.wait(events: &events, tags: &tags, timeoutMillis: 0) == 0)
        var byte: UInt8 = 1
        #expect(write(p[1], &byte, 1) == 1)
        #expect(epoll.wait(events: &events, tags: &tags, timeoutMillis: 1000) == 1)
        #expect(tags[0] == 7 && events[0] & Epoll.readable != 0)
        // Level-triggered: still ready until read.
        #expect(epoll.wait(events: &events, tags: &tags, timeoutMillis: 0) == 1)

        // The write end: writable with its own tag once watched for that.
        try epoll.add(p[1], events: Epoll.writable, tag: 9)
        #expect(epoll.wait(events: &events, tags: &tags, timeoutMillis: 0) == 2)
        #expect(Set(tags[0..<2]) == [7, 9])
        try epoll.modify(p[1], events: 0, tag: 9)
        epoll.remove(p[0])
        #expect(epoll.wait(events: &events, tags: &tags, timeoutMillis: 0) == 0)

        // A nested set: the epoll fd itself turns readable when a registration is ready.
        let outer = try Epoll()
        try outer.add(epoll.fd, tag: 1)
        try epoll.add(p[0], tag: 7)
        #expect(outer.wait(events: &events, tags: &tags, timeoutMillis: 1000) == 1 && tags[0] == 1)
    }

    @Test func registeringABadDescriptorNamesTheCall() throws {
        let epoll = try Epoll()
        #expect(throws: SystemError("epoll_ctl(ADD)", errno: EBADF)) { try epoll.add(-1, tag: 0) }
    }
}
