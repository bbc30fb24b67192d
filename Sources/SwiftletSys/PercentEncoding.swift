/// `%XX` escapes decoded; every other byte, '+' included, stands for
/// itself. Nil for a '%' not followed by two hex digits. What a SigV4
/// query string and libarchive's xattr names in a tar both need.
public func percentDecoded<C: Collection<UInt8>>(_ bytes: C) -> [UInt8]? {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var it = bytes.makeIterator()
    while let c = it.next() {
        guard c == UInt8(ascii: "%") else {
            out.append(c)
            continue
        }
        guard let h = it.next().flatMap(hexDigitValue), let l = it.next().flatMap(hexDigitValue) else { return nil }
        out.append(h << 4 | l)
    }
    return out
}

/// The value of one ASCII hex digit, either case; nil for any other byte.
public func hexDigitValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}
