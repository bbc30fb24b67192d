/// Where `serve --store` finds PostgreSQL: `postgres://user:password@host:port/db`
/// (TCP, without TLS: a fleet's database sits on its private network), or
/// `postgres://user@/db?host=/run/postgresql` for a Unix socket directory,
/// as libpq spells it. Percent escapes are decoded in the user, password
/// and database.
public struct PostgresURL: Equatable, Sendable, CustomStringConvertible {
    public enum Endpoint: Equatable, Sendable {
        case tcp(host: String, port: Int)
        /// The socket file itself (`<dir>/.s.PGSQL.<port>`).
        case unixSocket(path: String)
    }
    public var endpoint: Endpoint
    public var user: String
    public var password: String?
    public var database: String

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public init(_ text: String) throws(Invalid) {
        func fail(_ why: String) -> Invalid { Invalid(description: "'\(Self.redacted(text))' \(why)") }
        var rest: Substring
        if text.hasPrefix("postgres://") { rest = text.dropFirst("postgres://".count) }
        else if text.hasPrefix("postgresql://") { rest = text.dropFirst("postgresql://".count) }
        else { throw fail("is not a postgres:// URL") }
        var query: Substring = ""
        if let q = rest.firstIndex(of: "?") { (query, rest) = (rest[rest.index(after: q)...], rest[..<q]) }
        guard let slash = rest.firstIndex(of: "/") else { throw fail("names no database (postgres://host/DB)") }
        let authority = rest[..<slash]
        guard let db = Self.decode(rest[rest.index(after: slash)...]), !db.isEmpty, !db.contains("/") else { throw fail("names no database (postgres://host/DB)") }
        database = db
        var hostPort = authority
        user = "postgres"
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let colon = credentials.firstIndex(of: ":") {
                guard let u = Self.decode(credentials[..<colon]), let p = Self.decode(credentials[credentials.index(after: colon)...]) else { throw fail("has a bad percent escape") }
                (user, password) = (u, p)
            } else {
                guard let u = Self.decode(credentials) else { throw fail("has a bad percent escape") }
                user = u
            }
            guard !user.isEmpty else { throw fail("has an empty user name") }
        }
        var host = String(hostPort)
        var port = 5432
        if let colon = hostPort.lastIndex(of: ":"), !hostPort.hasSuffix("]") {
            guard let p = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(p) else { throw fail("has a bad port") }
            (host, port) = (String(hostPort[..<colon]), p)
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var socketDirectory: String?
        for pair in query.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, let value = Self.decode(kv[1]) else { throw fail("has a bad parameter '\(pair)'") }
            switch kv[0] {
            case "host":
                guard value.hasPrefix("/") else { throw fail("has host= that is not an absolute socket directory") }
                socketDirectory = value
            case "sslmode":
                guard value == "disable" || value == "prefer" || value == "allow" else { throw fail("asks for sslmode=\(value); TLS is not supported") }
            default: throw fail("has an unknown parameter '\(kv[0])'")
            }
        }
        if let socketDirectory {
            endpoint = .unixSocket(path: socketDirectory + "/.s.PGSQL.\(port)")
        } else {
            guard !host.isEmpty else { throw fail("names no host (or ?host=/socket/dir)") }
            endpoint = .tcp(host: host, port: port)
        }
    }

    /// The URL with its password hidden, for logs and errors.
    public var description: String {
        let auth = user + (password == nil ? "" : ":***")
        switch endpoint {
        case let .tcp(host, port): return "postgres://\(auth)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)"
        case let .unixSocket(path): return "postgres://\(auth)@/\(database)?socket=\(path)"
        }
    }

    static func redacted(_ text: String) -> String {
        // user:password@ → user:***@
        guard let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@"),
              let colon = text[scheme.upperBound..<at].firstIndex(of: ":") else { return text }
        return String(text[..<text.index(after: colon)]) + "***" + String(text[at...])
    }

    static func decode(_ s: Substring) -> String? {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        while i != s.utf8.endIndex {
            let c = s.utf8[i]
            if c == UInt8(ascii: "%") {
                let h = s.utf8.index(after: i)
                guard h != s.utf8.endIndex, s.utf8.index(after: h) != s.utf8.endIndex,
                      let v = UInt8(String(decoding: s.utf8[h...s.utf8.index(after: h)], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(v)
                i = s.utf8.index(h, offsetBy: 2)
            } else {
                bytes.append(c)
                i = s.utf8.index(after: i)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
