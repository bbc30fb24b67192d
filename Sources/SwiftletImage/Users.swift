/// The image's /etc/passwd and /etc/group, for `User` and `--user`: a name
/// or a uid, optionally `:group` (a name or a gid), as Docker reads them.
public struct UserDatabase: Equatable, Sendable {
    struct Account: Equatable { var name: String; var uid: UInt32; var gid: UInt32; var home: String }
    struct Group: Equatable { var name: String; var gid: UInt32; var members: [String] }
    var accounts: [Account] = []
    var groups: [Group] = []

    public init(passwd: [UInt8]?, group: [UInt8]?) {
        for fields in Self.lines(passwd, minimumFields: 7) {
            guard let uid = UInt32(fields[2]), let gid = UInt32(fields[3]) else { continue }
            accounts.append(Account(name: fields[0], uid: uid, gid: gid, home: fields[5]))
        }
        for fields in Self.lines(group, minimumFields: 4) {
            guard let gid = UInt32(fields[2]) else { continue }
            groups.append(Group(name: fields[0], gid: gid, members: fields[3].split(separator: ",").map(String.init)))
        }
    }

    /// Who a job runs as.
    public struct Resolved: Equatable, Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// Supplementary groups: those /etc/group lists the user in.
        public var groups: [UInt32]
        /// The account's home directory ("/" for a uid without an account).
        public var home: String
    }

    /// Resolves `spec` ("" is root). A name must be in the files; a number
    /// need not be (its group is then 0, or the given one).
    public func resolve(_ spec: String) throws(ImageError) -> Resolved {
        let parts = spec.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let userPart = parts.first ?? ""
        let groupPart = parts.count > 1 ? parts[1] : nil
        var resolved: Resolved
        var name: String?
        if userPart.isEmpty {
            let root = accounts.first { $0.uid == 0 }
            resolved = Resolved(uid: 0, gid: root?.gid ?? 0, groups: [], home: root?.home ?? "/root")
            name = root?.name
        } else if let account = accounts.first(where: { $0.name == userPart }) {
            resolved = Resolved(uid: account.uid, gid: account.gid, groups: [], home: account.home)
            name = account.name
        } else if let uid = UInt32(userPart) {
            let account = accounts.first { $0.uid == uid }
            resolved = Resolved(uid: uid, gid: account?.gid ?? 0, groups: [], home: account?.home ?? "/")
            name = account?.name
        } else {
            throw .unknownUser(userPart)
        }
        if let groupPart, !groupPart.isEmpty {
            if let g = groups.first(where: { $0.name == groupPart }) { resolved.gid = g.gid }
            else if let gid = UInt32(groupPart) { resolved.gid = gid }
            else { throw .unknownGroup(groupPart) }
        } else if let name {
            var seen: Set<UInt32> = [resolved.gid]
            for g in groups where g.members.contains(name) && seen.insert(g.gid).inserted { resolved.groups.append(g.gid) }
        }
        if resolved.groups.count > 64 { resolved.groups.removeLast(resolved.groups.count - 64) }
        if resolved.home.isEmpty { resolved.home = "/" }
        return resolved
    }

    /// The colon-separated records of a passwd-style file (comments and short lines skipped).
    private static func lines(_ bytes: [UInt8]?, minimumFields: Int) -> [[String]] {
        guard let bytes else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            if line.hasPrefix("#") { return nil }
            let fields = line.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            return fields.count >= minimumFields ? fields : nil
        }
    }
}
