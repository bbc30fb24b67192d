import Crypto
import Foundation
import SwiftletSys

// AWS Signature Version 4, header form (`Authorization: AWS4-HMAC-SHA256 ...`), as the daemon's
// Lambda-compatible invoke API verifies it, so that boto3 and the AWS CLI work against it unmodified.
//
// The canonical request is what botocore's `SigV4Auth` builds for a non-S3 service:
//
//     METHOD \n CANONICAL_URI \n CANONICAL_QUERY \n CANONICAL_HEADERS \n \n SIGNED_HEADERS \n PAYLOAD_HASH
//
// - CANONICAL_URI: the path as it went over the wire (already percent-encoded once by the client),
//   with dot segments and empty segments removed, then percent-encoded once more with only the RFC 3986
//   unreserved characters and '/' kept. A Lambda function ARN in the path, sent as
//   `arn%3Aaws%3Alambda%3A...`, so canonicalizes to `arn%253Aaws%253Alambda%253A...`
//   (botocore: `quote(normalize_url_path(urlsplit(url).path), safe='/~')`; the SigV4 spec's
//   "encode each path segment twice, except for S3").
// - CANONICAL_QUERY: each `name=value` pair percent-decoded, re-encoded with only the unreserved
//   characters kept (uppercase hex), sorted by name then value; a name without '=' gets an empty value.
// - CANONICAL_HEADERS: for each name in SignedHeaders (lowercase, sorted), `name:value` where the
//   value is every received value of that header, trimmed and with internal whitespace runs
//   collapsed to one space, joined by ','.
// - PAYLOAD_HASH: the hex SHA-256 of the body. When the client sent X-Amz-Content-Sha256, that value
//   is what it signed, and it must equal the hash of the body received (so UNSIGNED-PAYLOAD and the
//   streaming forms are refused: botocore never sends them to Lambda).
//
// The string to sign is `AWS4-HMAC-SHA256 \n X-Amz-Date \n DATE/REGION/SERVICE/aws4_request \n
// hex(SHA256(canonical request))`, signed with the key derived from the secret by the HMAC chain
// `"AWS4"+secret` -> date -> region -> service -> "aws4_request".

/// One request as the HTTP layer hands it over.
public struct SigV4Request: Sendable {
    /// The method, e.g. "POST".
    public var method: String
    /// The raw request path as received, percent-encoded, without the query,
    /// e.g. "/2015-03-31/functions/echo/invocations".
    public var path: String
    /// The raw query string without the '?', or "".
    public var query: String
    /// Every request header as received: names in any case, possibly repeated, in the order received.
    /// `host` is signed by every AWS client: an HTTP/2 front end must hand `:authority` over as `Host`.
    public var headers: [(name: String, value: String)]
    /// The request body, whole.
    public var body: [UInt8]

    public init(method: String, path: String, query: String, headers: [(name: String, value: String)], body: [UInt8]) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
    }
}

/// Why a request's signature was not accepted. The strings are for logs and error responses;
/// they never carry a secret.
public enum SigV4Error: Error, Equatable, Sendable {
    /// The request carries no Authorization header.
    case missing
    /// The Authorization header, the X-Amz-Date header or the request itself is not of the SigV4 form.
    case malformed(String)
    /// The credential names an access key id that is not configured (the id).
    case unknownAccessKey(String)
    /// The credential scope names another service than the verifier's (the scope's service).
    case wrongService(String)
    /// The request's X-Amz-Date is further from now than the allowed skew (a description).
    case expired(String)
    /// The signature, or the declared payload hash, does not match the request.
    case signatureMismatch
}

/// Verifies SigV4 header signatures against a fixed set of access keys.
public struct SigV4Verifier: Sendable {
    private let keys: [String: String]
    public let service: String
    public let maxSkewSeconds: Double

    /// - Parameters:
    ///   - keys: access key id -> secret access key.
    ///   - service: the service the credential scope must name ("lambda").
    ///   - maxSkewSeconds: how far X-Amz-Date may be from the verifier's clock, either way.
    public init(keys: [String: String], service: String = "lambda", maxSkewSeconds: Double = 900) {
        self.keys = keys
        self.service = service
        self.maxSkewSeconds = maxSkewSeconds
    }

    /// Returns the access key id when the signature is valid.
    public func verify(_ r: SigV4Request, now: Date = Date()) throws(SigV4Error) -> String {
        // The Authorization header: exactly one, of the SigV4 scheme.
        let headers = SigV4.headerMap(r.headers)
        let authValues = headers["authorization"] ?? []
        guard let authValue = authValues.first else { throw .missing }
        guard authValues.count == 1 else { throw .malformed("more than one Authorization header") }
        let auth = try SigV4.parseAuthorization(authValue)

        guard auth.service == service else { throw .wrongService(auth.service) }

        // The date: X-Amz-Date, exactly one, in ISO 8601 basic form, within the skew, on the scope's day.
        let dateValues = headers["x-amz-date"] ?? []
        guard let rawDate = dateValues.first else { throw .malformed("missing X-Amz-Date header") }
        guard dateValues.count == 1 else { throw .malformed("more than one X-Amz-Date header") }
        let amzDate = SigV4.trimAll(rawDate)
        guard let requestTime = SigV4.parseAmzDate(amzDate) else {
            throw .malformed("X-Amz-Date is not of the form yyyyMMddTHHmmssZ")
        }
        guard auth.date == String(amzDate.prefix(8)) else {
            throw .malformed("credential scope date \(auth.date) is not the date of X-Amz-Date \(amzDate)")
        }
        let nowSeconds = now.timeIntervalSince1970
        let skew = abs(nowSeconds - Double(requestTime))
        // `!(skew <= max)` also refuses a NaN clock or skew limit.
        guard skew <= maxSkewSeconds else {
            throw .expired("X-Amz-Date \(amzDate) is more than \(maxSkewSeconds) s from the server's time")
        }

        guard let secret = keys[auth.accessKey] else { throw .unknownAccessKey(auth.accessKey) }

        // The payload hash: computed here; a declared one must agree.
        let bodyHash = SigV4.sha256Hex(r.body)
        var payloadHash = bodyHash
        let declared = headers["x-amz-content-sha256"] ?? []
        if !declared.isEmpty {
            guard declared.count == 1 else { throw .malformed("more than one X-Amz-Content-Sha256 header") }
            let value = SigV4.trimAll(declared[0])
            guard SigV4.asciiLowercased(value) == bodyHash else { throw .signatureMismatch }
            payloadHash = value  // what the client signed, byte for byte
        }

        // The canonical headers, from the names the client signed.
        var canonicalHeaders = ""
        for name in auth.signedHeaders {
            let values = headers[name] ?? []
            guard !values.isEmpty else { throw .malformed("signed header \(name) is not in the request") }
            canonicalHeaders += name + ":" + values.map(SigV4.trimAll).joined(separator: ",") + "\n"
        }

        let canonicalQuery = try SigV4.canonicalQuery(r.query)
        let canonicalRequest = [
            r.method,
            SigV4.canonicalURI(r.path),
            canonicalQuery,
            canonicalHeaders,
            auth.signedHeaders.joined(separator: ";"),
            payloadHash,
        ].joined(separator: "\n")

        let expected = SigV4.signature(
            canonicalRequest: canonicalRequest, amzDate: amzDate, date: auth.date,
            region: auth.region, service: auth.service, secret: secret
        )
        guard SigV4.constantTimeEqual(Array(expected.utf8), auth.signature) else { throw .signatureMismatch }
        return auth.accessKey
    }

    /// True when the request carries a SigV4 Authorization header at all.
    public static func isSigned(_ headers: [(name: String, value: String)]) -> Bool {
        SigV4.values(of: "authorization", in: headers).contains { SigV4.hasSigV4Scheme($0) }
    }

    /// Signs a request (for tests and for the daemon's own CLI client): returns the headers to add,
    /// Authorization, X-Amz-Date and X-Amz-Content-Sha256.
    ///
    /// Every header passed in is signed except those botocore leaves unsigned (User-Agent, Expect,
    /// the hop-by-hop ones, X-Amzn-Trace-Id) and any Authorization, X-Amz-Date or
    /// X-Amz-Content-Sha256 already there, which the returned ones replace. Pass `Host` (as the
    /// HTTP client will send it, with the port when it is not the default): the verifier requires
    /// it signed. `path` and `query` are the raw, already percent-encoded forms that go on the wire.
    public static func sign(
        method: String, path: String, query: String, headers: [(name: String, value: String)], body: [UInt8],
        accessKey: String, secret: String, region: String, service: String, date: Date
    ) -> [(name: String, value: String)] {
        let amzDate = SigV4.formatAmzDate(date)
        let day = String(amzDate.prefix(8))
        let payloadHash = SigV4.sha256Hex(body)

        var byName: [String: [String]] = [:]
        for (name, value) in headers {
            let lname = SigV4.asciiLowercased(SigV4.trimAll(name))
            if lname.isEmpty || SigV4.unsignedHeaders.contains(lname) || SigV4.replacedHeaders.contains(lname) { continue }
            byName[lname, default: []].append(value)
        }
        byName["x-amz-date"] = [amzDate]
        byName["x-amz-content-sha256"] = [payloadHash]
        let names = byName.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }

        var canonicalHeaders = ""
        for name in names {
            canonicalHeaders += name + ":" + (byName[name] ?? []).map(SigV4.trimAll).joined(separator: ",") + "\n"
        }
        let signedHeaders = names.joined(separator: ";")
        // The query comes from the caller, who builds it: one that does not decode is signed as given.
        let canonicalQuery = (try? SigV4.canonicalQuery(query)) ?? query
        let canonicalRequest = [
            method, SigV4.canonicalURI(path), canonicalQuery, canonicalHeaders, signedHeaders, payloadHash,
        ].joined(separator: "\n")
        let signature = SigV4.signature(
            canonicalRequest: canonicalRequest, amzDate: amzDate, date: day,
            region: region, service: service, secret: secret
        )
        let authorization = "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(day)/\(region)/\(service)/aws4_request, "
            + "SignedHeaders=\(signedHeaders), Signature=\(signature)"
        return [
            (name: "Authorization", value: authorization),
            (name: "X-Amz-Date", value: amzDate),
            (name: "X-Amz-Content-Sha256", value: payloadHash),
        ]
    }
}

/// A keys file that could not be read or has a line that is not `ACCESS_KEY_ID SECRET`.
public struct AccessKeysFileError: Error, Equatable, Sendable, CustomStringConvertible {
    public var path: String
    /// The 1-based line number, or nil when the file as a whole could not be read.
    public var line: Int?
    public var reason: String

    public init(path: String, line: Int?, reason: String) {
        self.path = path
        self.line = line
        self.reason = reason
    }

    public var description: String {
        if let line { return "\(path):\(line): \(reason)" }
        return "\(path): \(reason)"
    }
}

/// Parses a keys file: one `ACCESS_KEY_ID SECRET` per line (whitespace separated); lines whose first
/// non-blank character is '#', and blank lines, are ignored. Throws `AccessKeysFileError` naming the
/// line for a line with another number of fields, an access key id that cannot appear in a SigV4
/// credential (one with '/'), or an access key id given twice. Errors never quote a secret.
public func loadAccessKeys(path: String) throws -> [String: String] {
    let data: Data
    do {
        data = try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw AccessKeysFileError(path: path, line: nil, reason: "cannot read: \(error.localizedDescription)")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw AccessKeysFileError(path: path, line: nil, reason: "not UTF-8 text")
    }
    return try parseAccessKeys(text, path: path)
}

/// The parser behind `loadAccessKeys(path:)`, on the file's text.
func parseAccessKeys(_ text: String, path: String) throws(AccessKeysFileError) -> [String: String] {
    var keys: [String: String] = [:]
    // As bytes: "\r\n" is one Character, and a CRLF file must still split into lines.
    let lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
    for (index, line) in lines.enumerated() {
        let number = index + 1
        let fields = line.split(whereSeparator: SigV4.isSpace).map { String(decoding: $0, as: UTF8.self) }
        guard let first = fields.first else { continue }
        if first.hasPrefix("#") { continue }
        guard fields.count == 2 else {
            throw AccessKeysFileError(
                path: path, line: number,
                reason: "expected `ACCESS_KEY_ID SECRET`, found \(fields.count) field\(fields.count == 1 ? "" : "s")"
            )
        }
        let id = fields[0]
        guard !id.contains("/") else {
            throw AccessKeysFileError(path: path, line: number, reason: "access key id \(id) contains '/'")
        }
        guard keys[id] == nil else {
            throw AccessKeysFileError(path: path, line: number, reason: "access key id \(id) is given twice")
        }
        keys[id] = fields[1]
    }
    return keys
}

// MARK: - The parts

enum SigV4 {
    /// Headers botocore never signs (SIGNED_HEADERS_BLACKLIST); `sign` leaves them out too.
    static let unsignedHeaders: Set<String> = [
        "connection", "expect", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
    ]
    /// Headers `sign` sets itself.
    static let replacedHeaders: Set<String> = ["authorization", "x-amz-date", "x-amz-content-sha256"]

    static let algorithm = "AWS4-HMAC-SHA256"

    struct Authorization: Equatable {
        var accessKey: String
        var date: String
        var region: String
        var service: String
        var signedHeaders: [String]
        /// 64 lowercase hex digits, as bytes.
        var signature: [UInt8]
    }

    // MARK: Authorization header

    static func hasSigV4Scheme(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        var i = 0
        while i < bytes.count, isSpace(bytes[i]) { i += 1 }
        let scheme = Array(algorithm.utf8)
        guard bytes.count - i >= scheme.count, Array(bytes[i..<(i + scheme.count)]) == scheme else { return false }
        let after = i + scheme.count
        return after == bytes.count || isSpace(bytes[after])
    }

    /// `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`
    static func parseAuthorization(_ value: String) throws(SigV4Error) -> Authorization {
        guard hasSigV4Scheme(value) else { throw .malformed("Authorization is not of the AWS4-HMAC-SHA256 scheme") }
        // Worked on as bytes: a hostile header cannot make graphemes hide a ',' or a '='.
        let trimmed = Array(trimAll(value).utf8)
        let rest = trimmed.dropFirst(algorithm.utf8.count)

        var credential: String?
        var signedHeaders: String?
        var signature: String?
        for part in rest.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
            let item = Array(trimAll(String(decoding: part, as: UTF8.self)).utf8)
            guard let eq = item.firstIndex(of: UInt8(ascii: "=")) else {
                throw .malformed("Authorization component without '=': \(clip(String(decoding: item, as: UTF8.self)))")
            }
            let key = String(decoding: item[..<eq], as: UTF8.self)
            let val = String(decoding: item[(eq + 1)...], as: UTF8.self)
            switch key {
            case "Credential":
                guard credential == nil else { throw .malformed("Credential given twice") }
                credential = val
            case "SignedHeaders":
                guard signedHeaders == nil else { throw .malformed("SignedHeaders given twice") }
                signedHeaders = val
            case "Signature":
                guard signature == nil else { throw .malformed("Signature given twice") }
                signature = val
            default:
                throw .malformed("unknown Authorization component \(clip(key))")
            }
        }
        guard let credential else { throw .malformed("Authorization has no Credential") }
        guard let signedHeaders else { throw .malformed("Authorization has no SignedHeaders") }
        guard let signature else { throw .malformed("Authorization has no Signature") }

        // Credential: AKID/yyyyMMdd/region/service/aws4_request
        let scope = credential.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        guard scope.count == 5 else {
            throw .malformed("Credential is not ACCESS_KEY/DATE/REGION/SERVICE/aws4_request")
        }
        guard !scope[0].isEmpty else { throw .malformed("Credential has an empty access key id") }
        guard scope[1].utf8.count == 8, scope[1].utf8.allSatisfy(isDigit) else {
            throw .malformed("Credential scope date is not yyyyMMdd")
        }
        guard !scope[2].isEmpty else { throw .malformed("Credential scope has an empty region") }
        guard !scope[3].isEmpty else { throw .malformed("Credential scope has an empty service") }
        guard scope[4] == "aws4_request" else { throw .malformed("Credential scope does not end in aws4_request") }

        // SignedHeaders: lowercase names, sorted, no repeats; host and x-amz-date among them.
        let names = signedHeaders.utf8.split(separator: UInt8(ascii: ";"), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        var previous: [UInt8]?
        for name in names {
            let bytes = Array(name.utf8)
            guard !bytes.isEmpty, bytes.allSatisfy(isLowercaseTokenByte) else {
                throw .malformed("SignedHeaders has an invalid header name \(clip(name))")
            }
            if let previous, !previous.lexicographicallyPrecedes(bytes) {
                throw .malformed("SignedHeaders is not sorted without repeats")
            }
            previous = bytes
        }
        guard names.contains("host") else { throw .malformed("SignedHeaders does not include host") }
        guard names.contains("x-amz-date") else { throw .malformed("SignedHeaders does not include x-amz-date") }
        guard !names.contains("authorization") else { throw .malformed("SignedHeaders includes authorization") }

        // Signature: 64 hex digits.
        let sig = Array(signature.utf8)
        guard sig.count == 64, sig.allSatisfy(isHexDigit) else {
            throw .malformed("Signature is not 64 hex digits")
        }
        return Authorization(
            accessKey: scope[0], date: scope[1], region: scope[2], service: scope[3],
            signedHeaders: names, signature: sig.map(asciiLowercased)
        )
    }

    // MARK: Canonical forms

    /// botocore's canonical URI for non-S3 services: dot and empty segments removed from the path
    /// as sent (`remove_dot_segments`), then percent-encoded with only unreserved characters and '/' kept.
    static func canonicalURI(_ rawPath: String) -> String {
        percentEncode(Array(removeDotSegments(rawPath).utf8), keepSlash: true)
    }

    /// botocore's `remove_dot_segments`: RFC 3986 5.2.4, and runs of '/' collapsed; "" becomes "/".
    static func removeDotSegments(_ path: String) -> String {
        if path.isEmpty { return "/" }
        var output: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." {
                if !output.isEmpty { output.removeLast() }
                continue
            }
            output.append(segment)
        }
        let first = path.hasPrefix("/") ? "/" : ""
        let last = path.hasSuffix("/") && !output.isEmpty ? "/" : ""
        return first + output.joined(separator: "/") + last
    }

    /// Each `name=value` percent-decoded and re-encoded with only unreserved characters kept,
    /// sorted by name then value; empty components are skipped.
    static func canonicalQuery(_ rawQuery: String) throws(SigV4Error) -> String {
        if rawQuery.isEmpty { return "" }
        var pairs: [(name: [UInt8], value: [UInt8])] = []
        for component in rawQuery.utf8.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let bytes = Array(component)
            let name: [UInt8]
            let value: [UInt8]
            if let eq = bytes.firstIndex(of: UInt8(ascii: "=")) {
                name = bytes[..<eq].map { $0 }
                value = bytes[(eq + 1)...].map { $0 }
            } else {
                name = bytes
                value = []
            }
            guard let decodedName = percentDecoded(name), let decodedValue = percentDecoded(value) else {
                throw .malformed("query has an invalid percent escape")
            }
            pairs.append((
                Array(percentEncode(decodedName, keepSlash: false).utf8),
                Array(percentEncode(decodedValue, keepSlash: false).utf8)
            ))
        }
        pairs.sort { a, b in
            if a.name != b.name { return a.name.lexicographicallyPrecedes(b.name) }
            return a.value.lexicographicallyPrecedes(b.value)
        }
        return pairs.map { String(decoding: $0.name, as: UTF8.self) + "=" + String(decoding: $0.value, as: UTF8.self) }
            .joined(separator: "&")
    }

    // MARK: Signing

    static func signature(
        canonicalRequest: String, amzDate: String, date: String, region: String, service: String, secret: String
    ) -> String {
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let stringToSign = [algorithm, amzDate, scope, sha256Hex(Array(canonicalRequest.utf8))]
            .joined(separator: "\n")
        var key = Array("AWS4\(secret)".utf8)
        for part in [date, region, service, "aws4_request"] {
            key = hmac(key: key, Array(part.utf8))
        }
        return hex(hmac(key: key, Array(stringToSign.utf8)))
    }

    static func sha256Hex(_ bytes: [UInt8]) -> String { hex(SHA256.hash(data: bytes)) }

    static func hmac(key: [UInt8], _ message: [UInt8]) -> [UInt8] {
        let code = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key))
        return code.withUnsafeBytes { Array($0) }
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in 0..<a.count { difference |= a[i] ^ b[i] }
        return difference == 0
    }

    // MARK: Dates

    /// Seconds since the epoch for `yyyyMMddTHHmmssZ`, or nil.
    static func parseAmzDate(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count == 16, b[8] == UInt8(ascii: "T"), b[15] == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var n: Int64 = 0
            for i in range {
                guard isDigit(b[i]) else { return nil }
                n = n * 10 + Int64(b[i] - UInt8(ascii: "0"))
            }
            return n
        }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8),
              let hour = number(9..<11), let minute = number(11..<13), let second = number(13..<15)
        else { return nil }
        guard (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month),
              hour < 24, minute < 60, second < 60
        else { return nil }
        return daysFromCivil(year: year, month: month, day: day) * 86_400 + hour * 3_600 + minute * 60 + second
    }

    /// `yyyyMMddTHHmmssZ` in UTC, the date's seconds truncated.
    static func formatAmzDate(_ date: Date) -> String {
        var t = date.timeIntervalSince1970.rounded(.down)
        // Keep to four-digit years (0000-01-01 ... 9999-12-31T23:59:59), and away from NaN.
        if !(t >= -62_167_219_200) { t = -62_167_219_200 }
        if t > 253_402_300_799 { t = 253_402_300_799 }
        let seconds = Int64(t)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (y, m, d) = civilFromDays(days)
        func pad(_ n: Int64, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return pad(y, 4) + pad(m, 2) + pad(d, 2) + "T"
            + pad(secondOfDay / 3_600, 2) + pad(secondOfDay % 3_600 / 60, 2) + pad(secondOfDay % 60, 2) + "Z"
    }

    static func isLeap(_ y: Int64) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func daysInMonth(year: Int64, month: Int64) -> Int64 {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        return (y, m, d)
    }

    // MARK: Bytes and strings

    /// Every header's values by lowercase name, each name's values in the order received.
    static func headerMap(_ headers: [(name: String, value: String)]) -> [String: [String]] {
        var map: [String: [String]] = [:]
        for (name, value) in headers { map[asciiLowercased(trimAll(name)), default: []].append(value) }
        return map
    }

    /// Every value of the header `lowercaseName` (matched case-insensitively), in order received.
    static func values(of lowercaseName: String, in headers: [(name: String, value: String)]) -> [String] {
        headers.compactMap { asciiLowercased(trimAll($0.name)) == lowercaseName ? $0.value : nil }
    }

    /// Leading and trailing whitespace removed, internal runs of whitespace made one space
    /// (botocore: `' '.join(value.split())` over ASCII whitespace).
    static func trimAll(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        var pendingSpace = false
        for byte in s.utf8 {
            if isSpace(byte) {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(UInt8(ascii: " ")) }
                pendingSpace = false
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func asciiLowercased(_ s: String) -> String {
        String(decoding: s.utf8.map(asciiLowercased), as: UTF8.self)
    }

    static func asciiLowercased(_ b: UInt8) -> UInt8 {
        b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") ? b + 32 : b
    }

    static func isSpace(_ b: UInt8) -> Bool {
        b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0B || b == 0x0C || b == 0x0D
    }

    static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    static func isHexDigit(_ b: UInt8) -> Bool {
        isDigit(b) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "f")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "F"))
    }

    /// An RFC 9110 token character, uppercase letters excepted.
    static func isLowercaseTokenByte(_ b: UInt8) -> Bool {
        if isDigit(b) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) { return true }
        return Array("!#$%&'*+-.^_`|~".utf8).contains(b)
    }

    static func isUnreserved(_ b: UInt8) -> Bool {
        isDigit(b) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "~")
    }

    static let hexDigits = Array("0123456789ABCDEF".utf8)

    /// RFC 3986 encoding: unreserved bytes (and '/' when asked) kept, the rest `%XX` in uppercase hex.
    static func percentEncode(_ bytes: [UInt8], keepSlash: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for b in bytes {
            if isUnreserved(b) || (keepSlash && b == UInt8(ascii: "/")) {
                out.append(b)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hexDigits[Int(b >> 4)])
                out.append(hexDigits[Int(b & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func hex<D: Sequence>(_ bytes: D) -> String where D.Element == UInt8 {
        var out: [UInt8] = []
        for b in bytes {
            out.append(lowerHexDigits[Int(b >> 4)])
            out.append(lowerHexDigits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static let lowerHexDigits = Array("0123456789abcdef".utf8)

    /// At most 64 characters of something from the request, for an error message.
    static func clip(_ s: String) -> String {
        s.count <= 64 ? s : String(s.prefix(64)) + "..."
    }
}
