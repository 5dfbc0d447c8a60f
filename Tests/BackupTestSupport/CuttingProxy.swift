import Foundation

/// A loopback TCP relay to a server that cuts one connection: the first to
/// carry more than `cutAfter` bytes from its client is closed both ways
/// there, as a dropped network would leave it; every other connection
/// passes untouched. For tests of clients that must resume by themselves.
public final class CuttingProxy {
    /// HOST:PORT to connect to instead of the server.
    public let address: String
    private let process: Process
    private let cutFile: String
    private let scratch: ScratchDirectory

    public init(upstream: String, cutAfter: Int) throws {
        scratch = try ScratchDirectory("proxy")
        let portFile = scratch.path + "/port"
        cutFile = scratch.path + "/cut"
        let (host, port) = (upstream.split(separator: ":").dropLast().joined(separator: ":"), upstream.split(separator: ":").last!)
        let script = """
            import socket, sys, threading
            host, port, cut_after, port_file, cut_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
            listener = socket.socket(); listener.bind(('127.0.0.1', 0)); listener.listen(64)
            cut = threading.Event()
            def close(*sockets):
                for s in sockets:
                    try: s.shutdown(socket.SHUT_RDWR)
                    except OSError: pass
                    s.close()
            def relay(source, target, counted):
                sent = 0
                try:
                    while True:
                        data = source.recv(65536)
                        if not data: break
                        if counted and not cut.is_set():
                            sent += len(data)
                            if sent > cut_after:
                                cut.set(); open(cut_file, 'w').write(str(sent)); break
                        target.sendall(data)
                except OSError: pass
                close(source, target)
            with open(port_file + '.new', 'w') as f: f.write(str(listener.getsockname()[1]))
            import os; os.rename(port_file + '.new', port_file)
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((host, port))
                threading.Thread(target=relay, args=(client, server, True), daemon=True).start()
                threading.Thread(target=relay, args=(server, client, False), daemon=True).start()
            """
        let listening: String
        (process, listening) = try launchLoopbackHelper(script: script, arguments: [host, String(port), String(cutAfter), portFile, cutFile],
                                                        portFile: portFile, name: "the proxy")
        address = "127.0.0.1:\(listening)"
    }

    /// Whether a connection was cut.
    public var hasCut: Bool { FileManager.default.fileExists(atPath: cutFile) }

    public func stop() {
        // SIGKILL: the child inherits the test process's blocked signals, SIGTERM among them.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        scratch.remove()
    }
}

/// Starts a Python helper that listens on a loopback port and writes the
/// port to `portFile` once it does; returns its process and the port.
func launchLoopbackHelper(script: String, arguments: [String], portFile: String, name: String) throws -> (Process, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    process.arguments = ["-c", script] + arguments
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(10)
    while !FileManager.default.fileExists(atPath: portFile) && Date() < deadline { usleep(20_000) }
    guard let listening = try? String(contentsOfFile: portFile, encoding: .utf8) else {
        kill(process.processIdentifier, SIGKILL)
        throw TestSupportError("\(name) did not start")
    }
    return (process, listening)
}
