/// A FIFO of bytes waiting for a non-blocking socket: what a partial write
/// left behind. The caller bounds its size (guest credit); the storage is
/// released whenever it drains, so idle connections cost nothing.
struct VsockByteQueue {
    private var storage: [UInt8] = []
    private var head = 0

    /// Bytes waiting.
    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }

    /// Appends `bytes`.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        // Compact first when the consumed prefix is the larger part, so
        // appends never grow the storage past twice the live bytes.
        if head > 0 && head >= storage.count - head {
            storage.removeFirst(head)
            head = 0
        }
        // SAFETY: the caller's buffer is valid for this call and copied at once.
        unsafe storage.append(contentsOf: bytes)
    }

    /// Appends `count` bytes that `fill` writes into place; `fill` returns
    /// false to abandon them (nothing is appended then).
    mutating func append(count: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Bool) -> Bool {
        guard count > 0 else { return true }
        if head > 0 && head >= storage.count - head {
            storage.removeFirst(head)
            head = 0
        }
        let start = storage.count
        storage.append(contentsOf: repeatElement(0, count: count))
        // SAFETY: `fill` gets exactly the `count` bytes just added past `start`, for the call only.
        let ok = unsafe storage.withUnsafeMutableBytes { unsafe fill(UnsafeMutableRawBufferPointer(rebasing: $0[start...])) }
        if !ok { storage.removeLast(count) }
        return ok
    }

    /// Calls `body` with the waiting bytes (contiguous).
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        // SAFETY: the bytes from `head` on, lent to `body` for the call only.
        unsafe storage.withUnsafeBytes { unsafe body(UnsafeRawBufferPointer(rebasing: $0[head...])) }
    }

    /// Drops the first `n` waiting bytes (those written).
    mutating func consume(_ n: Int) {
        precondition(n >= 0 && n <= count, "consumed more than queued")
        head += n
        if head == storage.count { removeAll() }
    }

    /// Drops everything and frees the storage.
    mutating func removeAll() {
        storage = []
        head = 0
    }
}
