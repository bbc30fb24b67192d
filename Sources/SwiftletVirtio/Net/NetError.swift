import CSwiftlet
import Glibc
import SwiftletSys

/// Why a network device could not be set up: each case reads as one line.
/// Guest misbehaviour is never an error here: it costs the guest its frame.
public enum NetError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `tap=NAME` names no interface.
    case noSuchTap(String)
    /// The interface exists but is not a TAP device, or another process has it.
    case tapBusy(String)
    /// The name is empty or longer than 15 bytes.
    case invalidTapName(String)
    /// The MAC address is not six `xx:` pairs, or is multicast.
    case invalidMAC(String)
    /// Creating a TAP device or setting its address needs CAP_NET_ADMIN.
    case notPermitted(String)
    /// This user may not open `/dev/net/tun` at all (some hosts make it root's alone).
    case tunNotAccessible
    /// No /30 in the private range is free for `--net auto`.
    case noFreeSubnet
    /// A `--net` value that is neither `auto` nor `tap=NAME` (with an optional `,mac=`).
    case invalidSpec(String)
    /// Any other failure of the call named in the error.
    case system(SystemError)

    public var description: String {
        switch self {
        case let .noSuchTap(name): return "net: no TAP device named '\(name)' (create it first, e.g. ip tuntap add dev \(name) mode tap)"
        case let .tapBusy(name): return "net: '\(name)' is not a free TAP device (in use by another process, or not a TAP)"
        case let .invalidTapName(name): return "net: invalid TAP name '\(name)' (1 to 15 bytes, no '/' or spaces)"
        case let .invalidMAC(mac): return "net: invalid MAC address '\(mac)' (want six hex pairs like 02:00:00:00:00:01, not multicast)"
        case let .notPermitted(what): return "net: \(what) needs CAP_NET_ADMIN (run as root, or use --net tap=NAME with a TAP you own)"
        case .tunNotAccessible: return "net: permission denied on /dev/net/tun: grant this user access (setfacl -m u:USER:rw /dev/net/tun; most distributions ship it mode 0666)"
        case .noFreeSubnet: return "net: no free /30 left in \(NetAddressPlan.rangeDescription)"
        case let .invalidSpec(spec): return "net: invalid --net '\(spec)' (want auto[,mac=M] or tap=NAME[,mac=M])"
        case let .system(e): return "net: \(e)"
        }
    }
}

/// A MAC address, six bytes.
public struct MACAddress: Sendable, Equatable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 6)
        self.bytes = bytes
    }

    /// Parses `xx:xx:xx:xx:xx:xx` (or `-` separated); a multicast address is refused.
    public init(parsing text: String) throws(NetError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).count == 6
            ? text.split(separator: ":", omittingEmptySubsequences: false)
            : text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 6 else { throw .invalidMAC(text) }
        var bytes: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { throw .invalidMAC(text) }
            bytes.append(b)
        }
        guard bytes[0] & 1 == 0 else { throw .invalidMAC(text) }
        self.bytes = bytes
    }

    /// A locally administered unicast address (02:...) from the pid, the clock
    /// and random bytes: different for each VM, fixed for its lifetime.
    public static func generate() -> MACAddress {
        var random = [UInt8](repeating: 0, count: 3)
        _ = swlRandom(&random)
        let pid = UInt32(truncatingIfNeeded: getpid())
        return MACAddress(bytes: [0x02, 0x5e, UInt8(truncatingIfNeeded: pid >> 8) ^ random[0],
                                  UInt8(truncatingIfNeeded: pid) ^ random[1], random[2],
                                  UInt8(truncatingIfNeeded: time(nil))])
    }

    public var description: String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":") }
}

private func swlRandom(_ bytes: inout [UInt8]) -> Int32 {
    // SAFETY: getrandom fills at most the array's own bytes.
    unsafe bytes.withUnsafeMutableBytes { unsafe swl_getrandom($0.baseAddress, $0.count) }
}
