import Glibc
import SwiftletMemory
import Testing
@testable import SwiftletVirtio
import SwiftletTestSupport

struct FileIOTests {
    func openImage(_ image: TempImage) throws -> Int32 {
        let fd = open(image.path, O_RDWR)
        guard fd >= 0 else { throw TestFailure("open") }
        return fd
    }

    @Test func vectoredTransferBeyondIOVMax() throws {
        let image = try TempImage(sectors: 8)
        let fd = try openImage(image)
        defer { close(fd) }
        // 2048 two-byte iovecs: two batches at the kernel's limit.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        for i in 0..<4096 { buffer[i] = UInt8(truncatingIfNeeded: i * 7) }
        let pieces = (0..<2048).map { UnsafeMutableRawBufferPointer(rebasing: buffer[(2 * $0)..<(2 * $0 + 2)]) }
        #expect(FileIO.transfer(fd, pieces, offset: 512, write: true) == nil)
        #expect(try image.contents(at: 512, count: 4096) == Array(buffer))
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        #expect(FileIO.transfer(fd, pieces, offset: 512, write: false) == nil)
        #expect(try image.contents(at: 512, count: 4096) == Array(buffer))
    }

    @Test func readingPastTheEndOfTheFileIsEIO() throws {
        let image = try TempImage(sectors: 1)
        let fd = try openImage(image)
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 16)
        defer { buffer.deallocate() }
        #expect(FileIO.transfer(fd, [buffer], offset: 0, write: false) == EIO) // short, then EOF
        #expect(FileIO.transfer(fd, [], offset: 0, write: false) == nil)
    }

    @Test func writeZerosFallback() throws {
        let image = try TempImage(sectors: 300, pattern: { _ in 0x99 })
        let fd = try openImage(image)
        defer { close(fd) }
        #expect(FileIO.writeZeros(fd, offset: 512, length: 140 * 1024) == nil) // more than one 64 KiB chunk
        #expect(try image.contents(at: 512, count: 140 * 1024) == [UInt8](repeating: 0, count: 140 * 1024))
        #expect(try image.contents(at: 0, count: 512) == [UInt8](repeating: 0x99, count: 512))
        #expect(try image.contents(at: 512 + 140 * 1024, count: 512) == [UInt8](repeating: 0x99, count: 512))
    }

    @Test(.enabled(if: access("/dev/shm", W_OK) == 0))
    func writeZeroesOnTmpfs() throws {
        // tmpfs punches holes but has no ZERO_RANGE: the request still zeroes.
        let image = try TempImage(sectors: 32, directory: "/dev/shm", pattern: { _ in 0x44 })
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        for type in [VirtioBlock.requestWriteZeroes, VirtioBlock.requestDiscard] {
            let r = try d.postBlock(type: type, sector: 0, out: [segment(sector: type == VirtioBlock.requestDiscard ? 16 : 4, count: 8, flags: 0)])
            try serve(q, disk)
            #expect(try d.status(r) == VirtioBlock.statusOK)
        }
        #expect(try image.contents(at: 4 * 512, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try image.contents(at: 16 * 512, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try image.contents(at: 12 * 512, count: 2048) == [UInt8](repeating: 0x44, count: 2048))
    }
}
