import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// The SigV4 signer against botocore's own (`S3SigV4Auth`, what the AWS
/// CLI and boto3 sign with): the same canonical request and signature for
/// every method the object store uses, odd keys, query strings that need
/// encoding, empty, hashed and unsigned payloads, and temporary credentials.
@Suite struct SignatureV4Tests {
    static let date = Date(timeIntervalSince1970: 1_796_571_000)  // 2026-12-06T15:30:00Z
    static let plain = ObjectStoreCredentials(accessKeyID: "AKIAEXAMPLE0000001", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    static let temporary = ObjectStoreCredentials(accessKeyID: "ASIAEXAMPLE0000002", secretAccessKey: "s3cr3t+/=with=signs",
                                                  sessionToken: "FwoGZXIvYXdzEJr//////////wEaDOpZ+token=")

    struct Case {
        let request: ObjectStoreRequest
        let payload: String
        let credentials: ObjectStoreCredentials
        let region: String
    }

    static var cases: [Case] {
        let host = "127.0.0.1:9000"
        let key = "/bucket/prefix/" + SignatureV4.encode("blobs/ab/cd/a key with spaces+plus=equals&amp%percent~tilde!bang(é).bin",
                                                          keepingSlashes: true)
        let checksum = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        return [
            Case(request: ObjectStoreRequest(method: "GET", host: host, path: "/bucket/blobs/ab/cd/abcdef"),
                 payload: SignatureV4.emptyPayload, credentials: plain, region: "us-east-1"),
            Case(request: ObjectStoreRequest(method: "HEAD", host: "s3.eu-west-1.amazonaws.com", path: key,
                                             headers: [("Range", "bytes=0-1023")]),
                 payload: SignatureV4.emptyPayload, credentials: temporary, region: "eu-west-1"),
            Case(request: ObjectStoreRequest(method: "PUT", host: host, path: key,
                                             headers: [("Content-Length", "11"), ("Content-Type", "application/octet-stream"),
                                                       ("x-amz-checksum-sha256", checksum)]),
                 payload: ContentHash.of(Array("hello world".utf8)).hex, credentials: plain, region: "us-east-1"),
            Case(request: ObjectStoreRequest(method: "PUT", host: host, path: key,
                                             query: [("partNumber", "3"), ("uploadId", "2~abc/def+ghi=jkl")],
                                             headers: [("Content-Length", "16777216"), ("x-amz-checksum-sha256", checksum)]),
                 payload: SignatureV4.unsignedPayload, credentials: plain, region: "us-east-1"),
            Case(request: ObjectStoreRequest(method: "GET", host: host, path: "/bucket",
                                             query: [("list-type", "2"), ("prefix", "backupd/blobs/a b+c/"),
                                                     ("continuation-token", "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="),
                                                     ("max-keys", "1000")]),
                 payload: SignatureV4.emptyPayload, credentials: plain, region: "us-east-1"),
            Case(request: ObjectStoreRequest(method: "POST", host: host, path: "/bucket", query: [("delete", "")],
                                             headers: [("Content-Type", "application/xml"), ("x-amz-checksum-sha256", checksum),
                                                       ("X-Custom-Spaces", "  two   words  ")]),
                 payload: ContentHash.of(Array("<Delete></Delete>".utf8)).hex, credentials: temporary, region: "us-west-2"),
            Case(request: ObjectStoreRequest(method: "POST", host: host, path: key, query: [("uploads", "")]),
                 payload: SignatureV4.emptyPayload, credentials: plain, region: "us-east-1"),
            Case(request: ObjectStoreRequest(method: "DELETE", host: host, path: key, query: [("uploadId", "a b")]),
                 payload: SignatureV4.emptyPayload, credentials: plain, region: "us-east-1"),
        ]
    }

    @Test func everyRequestIsSignedAsBotocoreSignsIt() async throws {
        let cases = Self.cases
        let input = try JSONSerialization.data(withJSONObject: cases.map { c -> [String: Any] in
            [
                "method": c.request.method, "host": c.request.host, "path": c.request.path, "query": c.request.queryString,
                "headers": c.request.headers.map { [$0.name, $0.value] }, "payload": c.payload, "region": c.region,
                "key": c.credentials.accessKeyID, "secret": c.credentials.secretAccessKey.revealed,
                "token": c.credentials.sessionToken?.revealed ?? "", "timestamp": "20261206T153000Z",
            ]
        })
        let script = """
            import json, sys
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
            answers = []
            for c in json.loads(sys.argv[1]):
                url = 'http://' + c['host'] + c['path'] + ('?' + c['query'] if c['query'] else '')
                request = AWSRequest(method=c['method'], url=url, data=b'')
                for name, value in c['headers']:
                    request.headers[name] = value
                request.context['timestamp'] = c['timestamp']
                request.headers['X-Amz-Date'] = c['timestamp']
                request.headers['X-Amz-Content-SHA256'] = c['payload']
                if c['token']:
                    request.headers['X-Amz-Security-Token'] = c['token']
                auth = S3SigV4Auth(Credentials(c['key'], c['secret'], c['token'] or None), 's3', c['region'])
                canonical = auth.canonical_request(request)
                answers.append({'canonical': canonical, 'signature': auth.signature(auth.string_to_sign(request, canonical), request)})
            print(json.dumps(answers))
            """
        let botocore = try await runCommand("/usr/bin/env", ["python3", "-c", script, String(decoding: input, as: UTF8.self)])
        try #require(botocore.status == 0, "\(botocore.standardError)")
        let answers = try #require(try JSONSerialization.jsonObject(with: Data(botocore.standardOutput.utf8)) as? [[String: String]])
        try #require(answers.count == cases.count)
        for (c, answer) in zip(cases, answers) {
            let signer = SignatureV4(credentials: c.credentials, region: c.region)
            let signed = signer.sign(c.request, payloadHash: c.payload, at: Self.date)
            let (canonical, _) = SignatureV4.canonicalRequest(signed.withoutAuthorization, payloadHash: c.payload)
            #expect(canonical == answer["canonical"], "\(c.request.method) \(c.request.path)")
            let authorization = try #require(signed.headers.first { $0.name == "Authorization" }?.value)
            #expect(authorization.hasSuffix("Signature=\(answer["signature"] ?? "?")"), "\(c.request.method) \(c.request.path)")
            #expect(authorization.hasPrefix("AWS4-HMAC-SHA256 Credential=\(c.credentials.accessKeyID)/20261206/\(c.region)/s3/aws4_request, "))
        }
    }

    @Test func aChangedRequestHasAnotherSignature() {
        let signer = SignatureV4(credentials: Self.plain, region: "us-east-1")
        let request = ObjectStoreRequest(method: "GET", host: "127.0.0.1:9000", path: "/bucket/a")
        func signature(_ request: ObjectStoreRequest, _ payload: String = SignatureV4.emptyPayload, at date: Date = Self.date) -> String? {
            signer.sign(request, payloadHash: payload, at: date).headers.first { $0.name == "Authorization" }?.value
        }
        var otherPath = request
        otherPath.path = "/bucket/b"
        var otherHost = request
        otherHost.host = "127.0.0.1:9001"
        var withRange = request
        withRange.headers = [("Range", "bytes=1-2")]
        let all = [signature(request), signature(otherPath), signature(otherHost), signature(withRange),
                   signature(request, ContentHash.of([1]).hex), signature(request, at: Self.date.addingTimeInterval(1))]
        #expect(Set(all.compactMap { $0 }).count == all.count)
    }

    @Test func theSecretNeverPrints() {
        let text = "\(Self.temporary) \(String(reflecting: Self.temporary))"
        #expect(!text.contains("s3cr3t") && !text.contains("FwoGZXIv"))
    }
}

extension ObjectStoreRequest {
    /// The request as it was signed: without the header that carries the signature.
    fileprivate var withoutAuthorization: ObjectStoreRequest {
        var request = self
        request.headers.removeAll { $0.name == "Authorization" }
        return request
    }
}
