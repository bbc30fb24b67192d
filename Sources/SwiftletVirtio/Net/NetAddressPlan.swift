import CSwiftlet
import Glibc

/// The host and guest addresses of one `--net auto` link: a /30 out of
/// 172.30.0.0/16, host `.1`, guest `.2` of the block.
public struct NetAddressPlan: Sendable, Equatable {
    public static let rangeBase: UInt32 = 0xac1e_0000 // 172.30.0.0
    public static let rangeBlocks = 1 << 14            // /16 in /30 blocks
    public static let rangeDescription = "172.30.0.0/16"
    public static let mask: UInt32 = 0xffff_fffc

    /// Host byte order.
    public let host: UInt32
    public let guest: UInt32

    public init(block: Int) {
        let net = Self.rangeBase + UInt32(block) * 4
        host = net + 1
        guest = net + 2
    }

    public var hostString: String { Self.format(host) }
    public var guestString: String { Self.format(guest) }

    /// The kernel's `ip=` argument: static address, the host as gateway, no autoconf.
    public var kernelArgument: String { "ip=\(guestString)::\(hostString):255.255.255.252::eth0:off" }

    public static func format(_ a: UInt32) -> String {
        "\(a >> 24).\((a >> 16) & 0xff).\((a >> 8) & 0xff).\(a & 0xff)"
    }

    /// The first block no interface address overlaps.
    public static func firstFree() throws(NetError) -> NetAddressPlan {
        for block in 0..<rangeBlocks {
            let plan = NetAddressPlan(block: block)
            let r = swl_ipv4_net_in_use(plan.host & mask, mask)
            if r < 0 { throw .system(.last("getifaddrs")) }
            if r == 0 { return plan }
        }
        throw .noFreeSubnet
    }
}
