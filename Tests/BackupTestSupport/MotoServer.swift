import BackupStorage
import Foundation

/// moto in server mode on a loopback port: the S3-compatible store of the
/// object-store tests, one per test process, each test in buckets of its
/// own. It checks signatures and permissions from the start of the tests:
/// the access key is made through its IAM API (a user whose policy allows
/// S3), and then moto is told to authenticate every request, so a request
/// signed wrongly, or with a key it does not know, is refused. It ends with
/// the test process (it watches its parent).
public struct MotoServer: Sendable {
    /// `http://127.0.0.1:PORT`.
    public let endpoint: String
    public let credentials: ObjectStoreCredentials
    public let region = "us-east-1"

    /// The test process's moto, started on first use.
    public static var shared: MotoServer {
        get async throws { try await started.value }
    }

    private static let started = Task<MotoServer, any Error> {
        let scratch = try ScratchDirectory("moto")
        let ready = scratch.path + "/ready"
        let script = """
            import json, os, sys, time, urllib.request
            import boto3
            from moto.moto_server.threaded_moto_server import ThreadedMotoServer
            server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)
            server.start()
            port = server.get_host_and_port()[1]
            url = 'http://127.0.0.1:%d' % port
            iam = boto3.client('iam', endpoint_url=url, region_name='us-east-1', aws_access_key_id='setup', aws_secret_access_key='setup')
            iam.create_user(UserName='backupd')
            iam.put_user_policy(UserName='backupd', PolicyName='objects', PolicyDocument=json.dumps(
                {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}))
            key = iam.create_access_key(UserName='backupd')['AccessKey']
            # From here on every request must be signed by a key moto knows, with a policy that allows it.
            urllib.request.urlopen(urllib.request.Request(url + '/moto-api/reset-auth', data=b'0', method='POST',
                                                   headers={'Content-Type': 'text/plain'}))
            with open(sys.argv[1] + '.part', 'w') as f:
                f.write('%d %s %s\\n' % (port, key['AccessKeyId'], key['SecretAccessKey']))
            os.rename(sys.argv[1] + '.part', sys.argv[1])
            parent = os.getppid()
            while os.getppid() == parent:
                time.sleep(0.5)
            """
        let process = try BackgroundCommand("/usr/bin/env", ["python3", "-c", script, ready])
        for _ in 0..<3000 {
            if let line = try? String(contentsOfFile: ready, encoding: .utf8) {
                scratch.remove()
                let parts = line.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                guard parts.count == 3 else { throw TestSupportError("moto's answer was not understood: \(line)") }
                return MotoServer(endpoint: "http://127.0.0.1:\(parts[0])",
                                  credentials: ObjectStoreCredentials(accessKeyID: parts[1], secretAccessKey: parts[2]), process: process)
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        scratch.remove()
        throw TestSupportError("moto did not start (is moto[server] installed? make test-deps installs it)")
    }

    /// moto's process: held as long as the server is, that is for the whole test process.
    private let process: BackgroundCommand

    private init(endpoint: String, credentials: ObjectStoreCredentials, process: BackgroundCommand) {
        self.endpoint = endpoint
        self.credentials = credentials
        self.process = process
    }
}
