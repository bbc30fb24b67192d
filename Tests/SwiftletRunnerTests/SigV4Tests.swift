import Foundation
import Testing

@testable import SwiftletRunner

// Fixed vectors, not computed here:
// - AWS's SigV4 test suite (as kept in awslabs/aws-c-auth, tests/aws-signing-test-suite/v4/<name>/:
//   request.txt, header-canonical-request.txt, header-signed-request.txt, context.json): key
//   AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, region us-east-1, service "service",
//   2015-08-30T12:36:00Z.
// - Requests made by real boto3 1.43.11 / botocore 1.43.11 (`lambda` client, endpoint_url
//   http://127.0.0.1:8080 or http://localhost:9000, clock pinned to 2026-12-03T10:20:30Z), captured at
//   botocore's `before-send` event: every header as sent, the signature botocore computed.

@Suite("SigV4")
struct SigV4Tests {
    // MARK: Fixtures

    static let exampleKeys = ["AKIDEXAMPLE": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"]
    /// 20150830T123600Z
    static let exampleNow = Date(timeIntervalSince1970: 1_440_938_160)
    static let exampleVerifier = SigV4Verifier(keys: exampleKeys, service: "service")

    static let botoKey = "AKIDSWIFTLETTEST"
    static let botoSecret = "swiftlet/secret+KEY/0123456789abcdefEXAMPLE"
    static let botoKeys = [botoKey: botoSecret]
    /// 20261203T102030Z
    static let botoNow = Date(timeIntervalSince1970: 1_796_293_230)
    static let lambda = SigV4Verifier(keys: botoKeys)

    static let arnPath =
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Aecho/invocations"
    static let userAgent =
        "Boto3/1.43.11 md/Botocore#1.43.11 ua/2.1 os/linux#6.18.44-fc-v1147 md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython m/Z,b,D,e,N cfg/retry-mode#legacy Botocore/1.43.11"

    /// `client.invoke(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:echo",
    /// Qualifier="$LATEST", Payload=b'{"hello": "world", "n": 1}')`, as boto3 sent it.
    static func botoARNInvoke() -> SigV4Request {
        SigV4Request(
            method: "POST",
            path: arnPath,
            query: "Qualifier=%24LATEST",
            headers: [
                ("Host", "127.0.0.1:8080"),
                ("Accept-Encoding", "identity"),
                ("User-Agent", userAgent),
                ("X-Amz-Date", "20261203T102030Z"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=a80b6e4516361d28bdcd2dba5b39a2879a3709bb596517a67f26a780dbe38f06"),
                ("amz-sdk-invocation-id", "af21c4d1-4ef9-43bc-ba39-cda7157c6a3f"),
                ("amz-sdk-request", "attempt=1"),
                ("Content-Length", "26"),
            ],
            body: Array(#"{"hello": "world", "n": 1}"#.utf8)
        )
    }

    /// `client.invoke(FunctionName="echo", Payload=b'{"hello":"world"}')` with a session token, to
    /// http://localhost:9000.
    static func botoTokenInvoke() -> SigV4Request {
        SigV4Request(
            method: "POST",
            path: "/2015-03-31/functions/echo/invocations",
            query: "",
            headers: [
                ("Host", "localhost:9000"),
                ("User-Agent", userAgent),
                ("X-Amz-Date", "20261203T102030Z"),
                ("X-Amz-Security-Token", "FQoGZXIvYXdzEXAMPLETOKEN=="),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=e68663db865a1bf30bb89e78f2aa3aebc6ed2d70d7178c35d20d091439ec2e2f"),
                ("amz-sdk-invocation-id", "18c379e9-dcd8-47a1-bea9-b3c31cdd3adc"),
                ("amz-sdk-request", "attempt=1"),
                ("Content-Length", "17"),
            ],
            body: Array(#"{"hello":"world"}"#.utf8)
        )
    }

    /// `client.invoke(FunctionName="echo", InvocationType="Event", LogType="Tail",
    /// ClientContext="eyJjdXN0b20iOnt9fQ==", Payload=b"[1, 2, 3]")` from a client in eu-west-1.
    static func botoEventInvoke() -> SigV4Request {
        SigV4Request(
            method: "POST",
            path: "/2015-03-31/functions/echo/invocations",
            query: "",
            headers: [
                ("Host", "127.0.0.1:8080"),
                ("X-Amz-Invocation-Type", "Event"),
                ("X-Amz-Log-Type", "Tail"),
                ("X-Amz-Client-Context", "eyJjdXN0b20iOnt9fQ=="),
                ("User-Agent", userAgent),
                ("X-Amz-Date", "20261203T102030Z"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/eu-west-1/lambda/aws4_request, SignedHeaders=host;x-amz-client-context;x-amz-date;x-amz-invocation-type;x-amz-log-type, Signature=887e37fecfd269ccc0509a0e3cf37ed03ad05509047ed670a576c36b2c32d037"),
                ("amz-sdk-invocation-id", "9af4e85b-9c0b-42cb-a004-2dd2a3dcf487"),
                ("amz-sdk-request", "attempt=1"),
                ("Content-Length", "9"),
            ],
            body: Array("[1, 2, 3]".utf8)
        )
    }

    static func exampleRequest(
        method: String = "GET", query: String = "", extra: [(name: String, value: String)] = [],
        authorization: String, body: [UInt8] = []
    ) -> SigV4Request {
        SigV4Request(
            method: method, path: "/", query: query,
            headers: [("Host", "example.amazonaws.com")] + extra
                + [("X-Amz-Date", "20150830T123600Z"), ("Authorization", authorization)],
            body: body
        )
    }

    static let vanillaAuthorization =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"

    /// A request `sign` signed for the lambda service, with the fixed boto3 key and date.
    static func signed(
        method: String = "POST", path: String = "/2015-03-31/functions/echo/invocations", query: String = "",
        headers: [(name: String, value: String)] = [("Host", "localhost:9000"), ("Content-Type", "application/json")],
        body: [UInt8] = Array(#"{"x":1}"#.utf8), accessKey: String = botoKey, secret: String = botoSecret,
        service: String = "lambda", date: Date = botoNow
    ) -> SigV4Request {
        let added = SigV4Verifier.sign(
            method: method, path: path, query: query, headers: headers, body: body,
            accessKey: accessKey, secret: secret, region: "us-east-1", service: service, date: date
        )
        return SigV4Request(method: method, path: path, query: query, headers: headers + added, body: body)
    }

    static func replacing(_ name: String, with value: String, in r: SigV4Request) -> SigV4Request {
        var r = r
        r.headers = r.headers.map { $0.name.lowercased() == name.lowercased() ? ($0.name, value) : $0 }
        return r
    }

    static func removing(_ name: String, from r: SigV4Request) -> SigV4Request {
        var r = r
        r.headers.removeAll { $0.name.lowercased() == name.lowercased() }
        return r
    }

    /// The error `verify` throws, or nil when it accepts.
    static func failure(_ v: SigV4Verifier, _ r: SigV4Request, now: Date) -> SigV4Error? {
        do throws(SigV4Error) {
            _ = try v.verify(r, now: now)
            return nil
        } catch {
            return error
        }
    }

    static func isMalformed(_ e: SigV4Error?) -> Bool {
        if case .malformed = e { return true }
        return false
    }

    // MARK: AWS test suite

    @Test func getVanilla() throws {
        let r = Self.exampleRequest(authorization: Self.vanillaAuthorization)
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
        #expect(SigV4Verifier.isSigned(r.headers))
    }

    @Test func getVanillaQueryOrderKeyCase() throws {
        let r = Self.exampleRequest(
            query: "Param2=value2&Param1=value1",
            authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
    }

    @Test func getHeaderValueTrim() throws {
        let r = Self.exampleRequest(
            extra: [("My-Header1", " value1"), ("My-Header2", #" "a   b   c""#)],
            authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
    }

    @Test func getHeaderKeyDuplicate() throws {
        let r = Self.exampleRequest(
            extra: [("My-Header1", "value2"), ("My-Header1", "value2"), ("My-Header1", "value1")],
            authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
        // The order of repeated values is signed.
        var swapped = r
        swapped.headers[1] = ("My-Header1", "value1")
        swapped.headers[3] = ("My-Header1", "value2")
        #expect(Self.failure(Self.exampleVerifier, swapped, now: Self.exampleNow) == .signatureMismatch)
    }

    @Test func getVanillaWithSessionToken() throws {
        let r = Self.exampleRequest(
            extra: [("X-Amz-Security-Token", "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267")],
            authorization: "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
    }

    @Test func postXWWWFormURLEncodedWithContentSHA256() throws {
        let r = SigV4Request(
            method: "POST", path: "/", query: "",
            headers: [
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Host", "example.amazonaws.com"),
                ("Content-Length", "13"),
                ("X-Amz-Date", "20150830T123600Z"),
                ("x-amz-content-sha256", "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"),
            ],
            body: Array("Param1=value1".utf8)
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
        // The declared hash is checked against the body received.
        var tampered = r
        tampered.body = Array("Param1=value2".utf8)
        #expect(Self.failure(Self.exampleVerifier, tampered, now: Self.exampleNow) == .signatureMismatch)
    }

    // MARK: Real boto3 requests

    @Test func boto3InvokeByARNWithQualifier() throws {
        #expect(try Self.lambda.verify(Self.botoARNInvoke(), now: Self.botoNow) == Self.botoKey)
    }

    @Test func boto3InvokeWithSessionToken() throws {
        let r = Self.botoTokenInvoke()
        #expect(try Self.lambda.verify(r, now: Self.botoNow) == Self.botoKey)
        // The token is signed like any other header.
        let changed = Self.replacing("X-Amz-Security-Token", with: "FQoGZXIvYXdzEXAMPLETOKEN=X", in: r)
        #expect(Self.failure(Self.lambda, changed, now: Self.botoNow) == .signatureMismatch)
    }

    @Test func boto3InvokeWithInvocationHeadersFromAnotherRegion() throws {
        #expect(try Self.lambda.verify(Self.botoEventInvoke(), now: Self.botoNow) == Self.botoKey)
    }

    @Test func canonicalURIEncodesThePathAsSentOnceMore() {
        // botocore's CanonicalRequest for the ARN invoke, second line (its debug log).
        #expect(
            SigV4.canonicalURI(Self.arnPath)
                == "/2015-03-31/functions/arn%253Aaws%253Alambda%253Aus-east-1%253A123456789012%253Afunction%253Aecho/invocations"
        )
        // botocore's remove_dot_segments, then quote(safe='/~').
        #expect(SigV4.canonicalURI("") == "/")
        #expect(SigV4.canonicalURI("/") == "/")
        #expect(SigV4.canonicalURI("/a//b/./c/../d/") == "/a/b/d/")
        #expect(SigV4.canonicalURI("/../..") == "/")
        #expect(SigV4.canonicalURI("/a b~c-d_e.f!") == "/a%20b~c-d_e.f%21")
        #expect(SigV4.canonicalURI("/\u{1234}") == "/%E1%88%B4")
    }

    @Test func canonicalQueryIsSortedAndReencoded() throws {
        #expect(try SigV4.canonicalQuery("") == "")
        #expect(try SigV4.canonicalQuery("Qualifier=%24LATEST") == "Qualifier=%24LATEST")
        #expect(try SigV4.canonicalQuery("b=2&a=y&a=x&c") == "a=x&a=y&b=2&c=")
        #expect(try SigV4.canonicalQuery("k=%7e%2a+/") == "k=~%2A%2B%2F")
        #expect(throws: SigV4Error.malformed("query has an invalid percent escape")) {
            try SigV4.canonicalQuery("a=%zz")
        }
        #expect(throws: SigV4Error.malformed("query has an invalid percent escape")) {
            try SigV4.canonicalQuery("a=%4")
        }
    }

    // MARK: sign

    @Test func signAgreesWithBotocore() {
        // botocore.auth.SigV4Auth(Credentials(AKIDSWIFTLETTEST, ...), "lambda", "us-east-1") on a POST with
        // Host, Content-Type, X-Amz-Content-SHA256 and User-Agent set before signing.
        let body = Array(#"{"job": "build", "args": ["-j", "2"]}"#.utf8)
        let added = SigV4Verifier.sign(
            method: "POST", path: Self.arnPath, query: "Qualifier=%24LATEST",
            headers: [("Host", "localhost:9000"), ("Content-Type", "application/json"), ("User-Agent", "swiftlet/1.0")],
            body: body, accessKey: Self.botoKey, secret: Self.botoSecret, region: "us-east-1", service: "lambda",
            date: Self.botoNow
        )
        #expect(added.map(\.name) == ["Authorization", "X-Amz-Date", "X-Amz-Content-Sha256"])
        #expect(added.map(\.value) == [
            "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/us-east-1/lambda/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature=1680935f1e142aab52eaaf358f5827abf4a89f57cacfe4660989503d3b6efef9",
            "20261203T102030Z",
            "0f48f55ded3c69ecdfcbc4694482c2de2824739415be2b7e4a1ca57612d0120b",
        ])
    }

    @Test func signReplacesItsOwnHeadersAndSkipsUnsignedOnes() {
        let headers: [(name: String, value: String)] = [
            ("Host", "localhost:9000"), ("X-Amz-Date", "19990101T000000Z"), ("Authorization", "old"),
            ("X-Amz-Content-Sha256", "old"), ("User-Agent", "x"), ("Expect", "100-continue"),
        ]
        let added = SigV4Verifier.sign(
            method: "GET", path: "/", query: "", headers: headers, body: [], accessKey: "AK", secret: "S",
            region: "r", service: "lambda", date: Self.botoNow
        )
        #expect(added[0].value.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date,"))
        #expect(added[1].value == "20261203T102030Z")
        #expect(added[2].value == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func amzDateFormatAndParse() {
        #expect(SigV4.formatAmzDate(Self.exampleNow) == "20150830T123600Z")
        #expect(SigV4.formatAmzDate(Date(timeIntervalSince1970: 1_796_293_230.999)) == "20261203T102030Z")
        #expect(SigV4.formatAmzDate(Date(timeIntervalSince1970: 0)) == "19700101T000000Z")
        #expect(SigV4.formatAmzDate(Date(timeIntervalSince1970: -1)) == "19691231T235959Z")
        #expect(SigV4.formatAmzDate(Date(timeIntervalSince1970: 951_782_400)) == "20000229T000000Z")
        #expect(SigV4.parseAmzDate("20150830T123600Z") == 1_440_938_160)
        #expect(SigV4.parseAmzDate("20000229T000000Z") == 951_782_400)
        #expect(SigV4.parseAmzDate("19700101T000000Z") == 0)
        for bad in [
            "", "20150830T123600", "2015-08-30T12:36:00Z", "20150830t123600Z", "20150230T000000Z",
            "20190229T000000Z", "20151301T000000Z", "20150800T000000Z", "20150830T240000Z", "20150830T126000Z",
            "20150830T123660Z", "2015083OT123600Z", "+0150830T123600Z", "20150830T123600ZZ", "２０150830T123600Z",
        ] {
            #expect(SigV4.parseAmzDate(bad) == nil, "\(bad)")
        }
    }

    // MARK: Round trips

    @Test func roundTrip() throws {
        #expect(try Self.lambda.verify(Self.signed(), now: Self.botoNow) == Self.botoKey)
        // An ARN path, a query to sort and decode, an empty body, a session token, repeated headers.
        let r = Self.signed(
            method: "GET", path: Self.arnPath + "/x%20y~z", query: "b=2&a=%2Fz&a=1&flag",
            headers: [
                ("host", "127.0.0.1:8080"), ("X-Amz-Security-Token", "tok"), ("X-Multi", "a"),
                ("x-multi", "  b   c "),
            ],
            body: []
        )
        #expect(try Self.lambda.verify(r, now: Self.botoNow) == Self.botoKey)
    }

    @Test func headerNamesMatchInAnyCase() throws {
        var r = Self.signed()
        r.headers = r.headers.map { ($0.name.uppercased(), $0.value) }
        #expect(try Self.lambda.verify(r, now: Self.botoNow) == Self.botoKey)
    }

    @Test func unsignedHeadersMayChange() throws {
        var r = Self.botoARNInvoke()
        r = Self.replacing("User-Agent", with: "something else", in: r)
        r = Self.replacing("amz-sdk-request", with: "attempt=2", in: r)
        r.headers.append(("X-Forwarded-For", "10.0.0.1"))
        #expect(try Self.lambda.verify(r, now: Self.botoNow) == Self.botoKey)
    }

    @Test func uppercaseSignatureHexIsAccepted() throws {
        let r = Self.exampleRequest(
            authorization: Self.vanillaAuthorization.replacingOccurrences(
                of: "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                with: "5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31")
        )
        #expect(try Self.exampleVerifier.verify(r, now: Self.exampleNow) == "AKIDEXAMPLE")
    }

    // MARK: Refusals

    @Test func tamperedBody() {
        // botocore sends no X-Amz-Content-Sha256: the body is in the signature.
        var r = Self.botoARNInvoke()
        r.body = Array(#"{"hello": "world", "n": 2}"#.utf8)
        #expect(Self.failure(Self.lambda, r, now: Self.botoNow) == .signatureMismatch)
        // sign() sends one: it must match the body received.
        var s = Self.signed()
        s.body = Array(#"{"x":2}"#.utf8)
        #expect(Self.failure(Self.lambda, s, now: Self.botoNow) == .signatureMismatch)
        // ... and a body hash header made to match the new body breaks the signature instead.
        let rehashed = Self.replacing(
            "X-Amz-Content-Sha256", with: SigV4.sha256Hex(Array(#"{"x":2}"#.utf8)), in: s)
        #expect(Self.failure(Self.lambda, rehashed, now: Self.botoNow) == .signatureMismatch)
        // UNSIGNED-PAYLOAD is not accepted.
        let unsigned = Self.replacing("X-Amz-Content-Sha256", with: "UNSIGNED-PAYLOAD", in: Self.signed())
        #expect(Self.failure(Self.lambda, unsigned, now: Self.botoNow) == .signatureMismatch)
    }

    @Test func tamperedHeaderPathQueryOrMethod() {
        let event = Self.botoEventInvoke()
        let sync = Self.replacing("X-Amz-Invocation-Type", with: "RequestResponse", in: event)
        #expect(Self.failure(Self.lambda, sync, now: Self.botoNow) == .signatureMismatch)
        let otherHost = Self.replacing("Host", with: "127.0.0.1:8081", in: event)
        #expect(Self.failure(Self.lambda, otherHost, now: Self.botoNow) == .signatureMismatch)

        var path = Self.botoARNInvoke()
        path.path = path.path.replacingOccurrences(of: "echo", with: "evil")
        #expect(Self.failure(Self.lambda, path, now: Self.botoNow) == .signatureMismatch)
        var query = Self.botoARNInvoke()
        query.query = "Qualifier=%241"
        #expect(Self.failure(Self.lambda, query, now: Self.botoNow) == .signatureMismatch)
        var method = Self.botoARNInvoke()
        method.method = "PUT"
        #expect(Self.failure(Self.lambda, method, now: Self.botoNow) == .signatureMismatch)
        var signature = Self.botoARNInvoke()
        signature = Self.replacing(
            "Authorization",
            with: "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=a80b6e4516361d28bdcd2dba5b39a2879a3709bb596517a67f26a780dbe38f07",
            in: signature)
        #expect(Self.failure(Self.lambda, signature, now: Self.botoNow) == .signatureMismatch)
        // The region is in the signature.
        let region = Self.replacing(
            "Authorization",
            with: "AWS4-HMAC-SHA256 Credential=AKIDSWIFTLETTEST/20261203/us-west-2/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=a80b6e4516361d28bdcd2dba5b39a2879a3709bb596517a67f26a780dbe38f06",
            in: Self.botoARNInvoke())
        #expect(Self.failure(Self.lambda, region, now: Self.botoNow) == .signatureMismatch)
    }

    @Test func wrongSecret() {
        let r = Self.signed(secret: "not-the-secret")
        #expect(Self.failure(Self.lambda, r, now: Self.botoNow) == .signatureMismatch)
        let other = SigV4Verifier(keys: [Self.botoKey: "rotated"])
        #expect(Self.failure(other, Self.botoARNInvoke(), now: Self.botoNow) == .signatureMismatch)
    }

    @Test func unknownAccessKey() {
        let r = Self.signed(accessKey: "AKIDOTHER")
        #expect(Self.failure(Self.lambda, r, now: Self.botoNow) == .unknownAccessKey("AKIDOTHER"))
        #expect(Self.failure(SigV4Verifier(keys: [:]), Self.botoARNInvoke(), now: Self.botoNow)
            == .unknownAccessKey(Self.botoKey))
    }

    @Test func wrongService() {
        let r = Self.signed(service: "s3")
        #expect(Self.failure(Self.lambda, r, now: Self.botoNow) == .wrongService("s3"))
        // The AWS example is signed for "service", not lambda.
        let vanilla = Self.exampleRequest(authorization: Self.vanillaAuthorization)
        #expect(Self.failure(SigV4Verifier(keys: Self.exampleKeys), vanilla, now: Self.exampleNow)
            == .wrongService("service"))
    }

    @Test func expiredOrFutureDate() throws {
        let r = Self.botoARNInvoke()
        #expect(try Self.lambda.verify(r, now: Self.botoNow.addingTimeInterval(900)) == Self.botoKey)
        #expect(try Self.lambda.verify(r, now: Self.botoNow.addingTimeInterval(-900)) == Self.botoKey)
        for offset: Double in [901, -901, 86_400, -31_536_000] {
            let e = Self.failure(Self.lambda, r, now: Self.botoNow.addingTimeInterval(offset))
            guard case .expired = e else {
                Issue.record("offset \(offset): \(String(describing: e))")
                continue
            }
        }
        let strict = SigV4Verifier(keys: Self.botoKeys, maxSkewSeconds: 5)
        guard case .expired = Self.failure(strict, r, now: Self.botoNow.addingTimeInterval(6)) else {
            Issue.record("a 5 s skew accepted 6 s")
            return
        }
        let nan = SigV4Verifier(keys: Self.botoKeys, maxSkewSeconds: .nan)
        guard case .expired = Self.failure(nan, r, now: Self.botoNow) else {
            Issue.record("a NaN skew accepted")
            return
        }
    }

    @Test func missingAuthorization() {
        let r = Self.removing("Authorization", from: Self.botoARNInvoke())
        #expect(Self.failure(Self.lambda, r, now: Self.botoNow) == .missing)
        #expect(!SigV4Verifier.isSigned(r.headers))
        #expect(!SigV4Verifier.isSigned([("Authorization", "Bearer abc")]))
        #expect(!SigV4Verifier.isSigned([("Authorization", "AWS4-HMAC-SHA256X Credential=a")]))
        #expect(SigV4Verifier.isSigned([("authorization", "  AWS4-HMAC-SHA256 Credential=a")]))
        #expect(SigV4Verifier.isSigned(Self.botoARNInvoke().headers))
    }

    @Test(arguments: [
        "",
        "Bearer abc",
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA1 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf3",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf3g",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws5_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2015083/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830//service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        // The scope's date is not X-Amz-Date's.
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        // SignedHeaders without host, without x-amz-date, unsorted, repeated, uppercase, empty name,
        // naming a header the request lacks, naming authorization.
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date;host, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=Host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=;host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-missing, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=authorization;host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        // Components repeated, unknown, without '=', or trailing.
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31, Extra=1",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31,",
    ])
    func malformedAuthorization(_ authorization: String) {
        let r = Self.exampleRequest(authorization: authorization)
        let e = Self.failure(Self.exampleVerifier, r, now: Self.exampleNow)
        #expect(Self.isMalformed(e), "\(String(describing: e))")
    }

    @Test func malformedDateHeaders() {
        let vanilla = Self.exampleRequest(authorization: Self.vanillaAuthorization)
        let v = Self.exampleVerifier
        let now = Self.exampleNow
        #expect(Self.failure(v, vanilla, now: now) == nil)
        #expect(Self.isMalformed(Self.failure(v, Self.removing("X-Amz-Date", from: vanilla), now: now)))
        for bad in ["2015-08-30T12:36:00Z", "20150830T123600", "Sun, 30 Aug 2015 12:36:00 GMT", "", "20150832T123600Z"] {
            let e = Self.failure(v, Self.replacing("X-Amz-Date", with: bad, in: vanilla), now: now)
            #expect(Self.isMalformed(e), "\(bad): \(String(describing: e))")
        }
        var twoDates = vanilla
        twoDates.headers.append(("x-amz-date", "20150830T123600Z"))
        #expect(Self.isMalformed(Self.failure(v, twoDates, now: now)))
        var twoAuthorizations = vanilla
        twoAuthorizations.headers.append(("authorization", Self.vanillaAuthorization))
        #expect(Self.isMalformed(Self.failure(v, twoAuthorizations, now: now)))
        var twoHashes = Self.signed()
        twoHashes.headers.append(("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
        #expect(Self.isMalformed(Self.failure(Self.lambda, twoHashes, now: Self.botoNow)))
        // A query that does not decode.
        var query = vanilla
        query.query = "a=%g0"
        #expect(Self.isMalformed(Self.failure(v, query, now: now)))
    }

    @Test func hostileAuthorizationHeadersThrowAndNeverTrap() {
        // Every prefix of a valid header, and every one-byte change at each position, is refused.
        let valid = Array(Self.vanillaAuthorization.utf8)
        let replacements: [UInt8] = [0x00, 0x20, 0x2C, 0x2F, 0x3B, 0x3D, 0x41, 0x61, 0x80, 0xCC, 0xFF]
        var variants: [String] = []
        for n in 0..<valid.count { variants.append(String(decoding: valid[..<n], as: UTF8.self)) }
        for i in 0..<valid.count {
            for b in replacements where b != valid[i] {
                var bytes = valid
                bytes[i] = b
                variants.append(String(decoding: bytes, as: UTF8.self))
            }
        }
        variants.append(String(repeating: ",", count: 10_000))
        variants.append("AWS4-HMAC-SHA256 " + String(repeating: "Credential=", count: 1_000))
        variants.append("AWS4-HMAC-SHA256 Credential=\u{301},\u{301}=\u{301}")
        var accepted: [String] = []
        for a in variants {
            let r = Self.exampleRequest(authorization: a)
            if Self.failure(Self.exampleVerifier, r, now: Self.exampleNow) == nil { accepted.append(a) }
        }
        // Only changes that leave the header equivalent may pass: none of these do, except
        // whitespace around separators and hex case in the signature.
        for a in accepted {
            let normalized = SigV4.trimAll(a).replacingOccurrences(of: ", ", with: ",").lowercased()
            let original = Self.vanillaAuthorization.replacingOccurrences(of: ", ", with: ",").lowercased()
            #expect(normalized == original, "accepted: \(a)")
        }
    }

    @Test func hostileRequestPartsThrowAndNeverTrap() {
        let strange = ["%", "%%", "%zz", "/..", "//", "\u{0}", "\u{FFFF}", "\u{1F600}", "a=%", "&&&", "=", "a=b=c"]
        for s in strange {
            var r = Self.botoARNInvoke()
            r.path = s
            #expect(Self.failure(Self.lambda, r, now: Self.botoNow) != nil)
            r = Self.botoARNInvoke()
            r.query = s
            #expect(Self.failure(Self.lambda, r, now: Self.botoNow) != nil)
            r = Self.replacing("X-Amz-Date", with: s, in: Self.botoARNInvoke())
            #expect(Self.failure(Self.lambda, r, now: Self.botoNow) != nil)
            r = Self.replacing("Host", with: s, in: Self.botoARNInvoke())
            #expect(Self.failure(Self.lambda, r, now: Self.botoNow) != nil)
        }
        // Clocks far from any plausible date.
        for t in [Double.nan, .infinity, -.infinity, 1e300, -1e300] {
            guard case .expired = Self.failure(Self.lambda, Self.botoARNInvoke(), now: Date(timeIntervalSince1970: t)) else {
                Issue.record("clock \(t) accepted")
                continue
            }
        }
    }

    // MARK: Keys file

    static func withKeysFile<T>(_ text: String, _ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("swiftlet-sigv4-keys-\(UUID().uuidString)").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    @Test func loadAccessKeysGoodFile() throws {
        let text = "# swiftletd access keys\n"
            + "AKIDSWIFTLETTEST swiftlet/secret+KEY/0123456789abcdefEXAMPLE\n"
            + "\n"
            + "   # an indented comment\n"
            + "\tAKIDTWO\t\tsecondSecret\r\n"
            + "AKIDTHREE   third=secret   "
        let keys = try Self.withKeysFile(text) { try loadAccessKeys(path: $0) }
        #expect(keys == [
            "AKIDSWIFTLETTEST": "swiftlet/secret+KEY/0123456789abcdefEXAMPLE",
            "AKIDTWO": "secondSecret",
            "AKIDTHREE": "third=secret",
        ])
        // The loaded keys verify what boto3 signed.
        #expect(try SigV4Verifier(keys: keys).verify(Self.botoARNInvoke(), now: Self.botoNow) == Self.botoKey)
        #expect(try Self.withKeysFile("") { try loadAccessKeys(path: $0) } == [:])
        #expect(try Self.withKeysFile("# only a comment\n\n") { try loadAccessKeys(path: $0) } == [:])
    }

    @Test(arguments: [
        ("AKID1 s1\nAKID2 s2 extra\n", 2),
        ("# c\n\nAKIDONLY\n", 3),
        ("AKID1 s1\nAKID1 s2\n", 2),
        ("AK/ID s1\n", 1),
        ("AKID1 s1 # a trailing comment\n", 1),
    ])
    func loadAccessKeysBadLine(_ text: String, _ line: Int) throws {
        let error = try Self.withKeysFile(text) { path in
            #expect(throws: AccessKeysFileError.self) { try loadAccessKeys(path: path) }
        }
        #expect(error?.line == line, "\(String(describing: error))")
        #expect(error?.description.contains(":\(line): ") == true)
        // A secret is never quoted.
        #expect(error?.description.contains("s2") == false)
    }

    @Test func loadAccessKeysMissingFile() {
        let error = #expect(throws: AccessKeysFileError.self) {
            try loadAccessKeys(path: "/nonexistent/swiftlet-keys")
        }
        #expect(error?.line == nil)
    }
}
