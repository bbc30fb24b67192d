// libFuzzer harness for the image readers under the unpacker: TarReader over
// DecompressingSource (gzip, zstd, plain) over a source that hands out its
// bytes in pieces, as a hostile image file would be read.
//
// Input: [mode u8][step u8][chunk u8][payload]
//   mode % 4 == 0  the payload is a tar archive, read as is
//   mode % 4 == 1  the payload goes through DecompressingSource first (it may be
//                  gzip, zstd or plain: the magic decides)
//   mode % 4 == 2  the payload is gzip-compressed by the harness (whole, or split
//                  in two members at mode / 4 * 64) and must decompress to itself
//   mode % 4 == 3  the same with zstd (one frame, or two)
//   step           the source hands out at most step + 1 bytes per read (255: all)
//   chunk          readData asks for chunk * 37 % 4096 + 1 bytes at a time
// The archive is read twice: once reading every entry's data, once skipping
// it; both must list the same entries and end the same way (nil or the same
// error). Checks: readData never returns more than asked nor more than the
// entry's size, and returns the whole size unless it throws; only files have
// a size; no NUL in a path or link target; mode within 0o7777; an error or the
// end is final (the next call gives it again); the reader never consumes more
// than the input holds. AddressSanitizer catches any access outside memory.
// Build and run with `FUZZ_TARGET=tar Tests/Fuzz/run.sh`.
import CDecompress
import Glibc
import SwiftletImage

/// Hands out the bytes at most `step` at a time.
struct PieceSource: ByteSource {
    let bytes: [UInt8]
    let step: Int
    var position = 0

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(StreamError) -> Int {
        let n = min(step, buffer.count, bytes.count - position)
        guard n > 0 else { return 0 }
        for i in 0..<n { buffer[i] = bytes[position + i] }
        position += n
        return n
    }
}

func compress(_ data: [UInt8], zstd: Bool) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: swl_testing_compress_bound(data.count) + 64)
    let n = data.withUnsafeBufferPointer { i in
        out.withUnsafeMutableBufferPointer { o in
            zstd ? swl_testing_zstd(i.baseAddress, i.count, o.baseAddress, o.count)
                 : swl_testing_gzip(i.baseAddress, i.count, o.baseAddress, o.count)
        }
    }
    precondition(n >= 0, "test compressor")
    return Array(out[0..<n])
}

enum Outcome: Equatable {
    case end
    case failed(TarError)
}

/// Reads the archive; returns its entries and how it ended.
func readArchive<S: ByteSource>(_ source: S, readData: Bool, chunk: Int, limit: Int) -> ([TarEntry], Outcome) {
    var reader = TarReader(source)
    var list: [TarEntry] = []
    var buffer = [UInt8](repeating: 0, count: chunk)
    var outcome: Outcome
    loop: while true {
        let entry: TarEntry?
        do { entry = try reader.next() } catch {
            outcome = .failed(error)
            break
        }
        guard let entry else {
            outcome = .end
            break
        }
        precondition(reader.position <= UInt64(limit), "consumed more than the input")
        precondition(entry.kind == .file || entry.size == 0, "a size on a non-file")
        precondition(!entry.path.utf8.contains(0) && !entry.linkTarget.utf8.contains(0), "a NUL in a name")
        precondition(entry.mode <= 0o7777, "mode bits")
        list.append(entry)
        guard readData else { continue }
        var got: UInt64 = 0
        while true {
            let n: Int
            do {
                n = try buffer.withUnsafeMutableBytes { b in
                    Result { () throws(TarError) in try reader.readData(into: b) }
                }.get()
            } catch {
                outcome = .failed(error)
                break loop
            }
            precondition(n >= 0 && n <= chunk, "readData returned more than asked")
            if n == 0 { break }
            got += UInt64(n)
            precondition(got <= entry.size, "more data than the entry's size")
        }
        precondition(got == entry.size, "less data than the entry's size")
    }
    // The end, or the error, is final.
    switch outcome {
    case .end:
        do {
            let again = try reader.next()
            precondition(again == nil, "end is not final")
        } catch {
            preconditionFailure("an error after the end")
        }
    case .failed(let e):
        do {
            _ = try reader.next()
            preconditionFailure("error is not final")
        } catch {
            precondition(error == e, "a different error after an error")
        }
    }
    return (list, outcome)
}

/// Decompresses `bytes` whole through DecompressingSource, or nil with the error.
func decompressAll(_ bytes: [UInt8], step: Int) -> Result<[UInt8], StreamError> {
    do throws(StreamError) {
        var s = try DecompressingSource(PieceSource(bytes: bytes, step: step))
        return .success(try readAll(&s, maxBytes: 8 << 20))
    } catch {
        return .failure(error)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count >= 3 else { return 0 }
    let mode = Int(data[0]), step = data[1] == 255 ? Int.max : Int(data[1]) + 1
    let chunk = Int(data[2]) * 37 % 4096 + 1
    let payload = Array(UnsafeBufferPointer(start: data + 3, count: count - 3))

    var tar = payload
    switch mode % 4 {
    case 0:
        break
    case 1:
        // Whatever decompresses (or passes through) is the archive; a stream error ends it.
        guard case .success(let plain) = decompressAll(payload, step: step) else { return 0 }
        tar = plain
        // Read through the decompressor too, below.
    default:
        // Round trip: compress (one or two members/frames) and decompress through the source.
        let zstd = mode % 4 == 3
        let split = min(mode / 4 * 64, payload.count)
        let pieces = mode / 4 == 0 ? [compress(payload, zstd: zstd)]
            : [compress(Array(payload[0..<split]), zstd: zstd), compress(Array(payload[split...]), zstd: zstd)]
        let packed = pieces.flatMap { $0 }
        switch decompressAll(packed, step: step) {
        case .success(let plain): precondition(plain == payload, "round trip")
        case .failure(let e): preconditionFailure("round trip failed: \(e)")
        }
        // A stream cut inside its last member or frame fails (truncated, or corrupt for a lone byte).
        // At least 4 bytes of the last piece stay, so a lone piece still shows its magic.
        if let last = pieces.last?.count, last > 5 {
            let cut = Array(packed.dropLast(1 + Int(data[2]) % (last - 5)))
            if case .success = decompressAll(cut, step: step) {
                // Only an uncompressed-looking prefix could pass through: never for our own output.
                preconditionFailure("a cut stream decompressed")
            }
        }
        tar = payload
    }

    let full = readArchive(PieceSource(bytes: tar, step: step), readData: true, chunk: chunk, limit: tar.count)
    let skipped = readArchive(PieceSource(bytes: tar, step: step), readData: false, chunk: chunk, limit: tar.count)
    precondition(full.0 == skipped.0, "reading and skipping data list different entries")
    precondition(full.1 == skipped.1, "reading and skipping data end differently")

    if mode % 4 == 1, let through = try? DecompressingSource(PieceSource(bytes: payload, step: step)) {
        let streamed = readArchive(through, readData: mode & 4 != 0, chunk: chunk, limit: Int.max)
        precondition(streamed.0 == full.0 && streamed.1 == full.1, "decompressing while reading differs")
    }
    return 0
}
