import Foundation

/// A loopback HTTP relay to an S3 server that misbehaves as a busy or broken
/// store does, on a share of requests chosen by a seeded random sequence:
/// it answers `503 SlowDown` (the request never reaches the store), resets
/// the connection once the request is read (it may or may not have been
/// sent on: here it is not), or stalls without an answer for `stallSeconds`
/// and then closes. Every other request is passed on, one per upstream
/// connection; the parts of multipart uploads after `partDelaySeconds` (a
/// slow link, for a test that must catch an upload under way). It counts
/// what it did, so a test knows the faults happened.
public final class FaultyStoreProxy {
    /// `http://127.0.0.1:PORT`, to use as the store's endpoint.
    public let endpoint: String
    private let process: Process
    private let scratch: ScratchDirectory
    private let countsFile: String

    /// What the proxy did so far.
    public struct Counts: Sendable, Equatable {
        public var passed = 0, slowDown = 0, reset = 0, stalled = 0
    }

    public init(upstream: String, slowDown: Double, reset: Double, stall: Double, stallSeconds: Double = 3, partDelaySeconds: Double = 0,
                seed: Int = 21) throws {
        scratch = try ScratchDirectory("faulty-store")
        let portFile = scratch.path + "/port"
        countsFile = scratch.path + "/counts"
        guard let upstreamURL = URLComponents(string: upstream), let host = upstreamURL.host, let port = upstreamURL.port else {
            throw TestSupportError("not an http://HOST:PORT upstream: \(upstream)")
        }
        let script = """
            import os, random, socket, struct, sys, threading, time
            host, port, port_file, counts_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
            slow, reset, stall, stall_seconds, delay, seed = map(float, sys.argv[5:11])
            fates = random.Random(int(seed)); lock = threading.Lock()
            counts = {'passed': 0, 'slowdown': 0, 'reset': 0, 'stalled': 0}
            def count(fate):
                with lock:
                    counts[fate] += 1
                    with open(counts_file + '.new', 'w') as f: f.write(' '.join('%s=%d' % kv for kv in counts.items()))
                    os.rename(counts_file + '.new', counts_file)
            def read_request(conn, buffered):
                while b'\\r\\n\\r\\n' not in buffered:
                    data = conn.recv(65536)
                    if not data: return None, b''
                    buffered += data
                head, rest = buffered.split(b'\\r\\n\\r\\n', 1)
                length = 0
                for line in head.split(b'\\r\\n')[1:]:
                    name, _, value = line.partition(b':')
                    if name.strip().lower() == b'content-length': length = int(value.strip())
                while len(rest) < length:
                    data = conn.recv(65536)
                    if not data: return None, b''
                    rest += data
                return head + b'\\r\\n\\r\\n' + rest[:length], rest[length:]
            def serve(conn):
                buffered = b''
                try:
                    while True:
                        request, buffered = read_request(conn, buffered)
                        if request is None: break
                        with lock: roll = fates.random()
                        if roll < slow:
                            count('slowdown')
                            body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>'
                            conn.sendall(b'HTTP/1.1 503 Slow Down\\r\\nContent-Type: application/xml\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)
                            continue
                        if roll < slow + reset:
                            count('reset')
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                            break
                        if roll < slow + reset + stall:
                            count('stalled')
                            time.sleep(stall_seconds)
                            break
                        count('passed')
                        if b'partNumber=' in request.split(b'\\r\\n', 1)[0]: time.sleep(delay)
                        head, _, body = request.partition(b'\\r\\n\\r\\n')
                        lines = [l for l in head.split(b'\\r\\n') if not l.lower().startswith(b'connection:')]
                        upstream = socket.create_connection((host, port))
                        upstream.sendall(b'\\r\\n'.join(lines) + b'\\r\\nConnection: close\\r\\n\\r\\n' + body)
                        while True:
                            data = upstream.recv(65536)
                            if not data: break
                            conn.sendall(data)
                        upstream.close()
                        break
                except OSError:
                    pass
                conn.close()
            listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen(256)
            with open(port_file + '.new', 'w') as f: f.write(str(listener.getsockname()[1]))
            os.rename(port_file + '.new', port_file)
            parent = os.getppid()
            def watch():
                while os.getppid() == parent: time.sleep(0.5)
                os._exit(0)
            threading.Thread(target=watch, daemon=True).start()
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
            """
        let listening: String
        (process, listening) = try launchLoopbackHelper(
            script: script, arguments: [host, String(port), portFile, countsFile] + [slowDown, reset, stall, stallSeconds, partDelaySeconds, Double(seed)].map { "\($0)" },
            portFile: portFile, name: "the faulty store proxy")
        endpoint = "http://127.0.0.1:\(listening)"
    }

    public var counts: Counts {
        var counts = Counts()
        for field in ((try? String(contentsOfFile: countsFile, encoding: .utf8)) ?? "").split(separator: " ") {
            let parts = field.split(separator: "=")
            guard parts.count == 2, let value = Int(parts[1]) else { continue }
            switch parts[0] {
            case "passed": counts.passed = value
            case "slowdown": counts.slowDown = value
            case "reset": counts.reset = value
            case "stalled": counts.stalled = value
            default: break
            }
        }
        return counts
    }

    public func stop() {
        // SIGKILL: the child inherits the test process's blocked signals, SIGTERM among them.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        scratch.remove()
    }
}
