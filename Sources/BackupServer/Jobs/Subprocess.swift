import Foundation
import BackupCatalog
import NIOPosix

/// A failed external command, with what it wrote to standard error.
struct SubprocessError: Error, CustomStringConvertible {
    let command: String
    let outcome: String
    let standardError: String

    var description: String {
        let detail = standardError.trimmingCharacters(in: .whitespacesAndNewlines)
        return "\(command) \(outcome)" + (detail.isEmpty ? "" : ": \(detail)")
    }
}

/// Runs an external program (pg_dump, pg_restore) to completion, in an
/// environment of its own (see `childEnvironment`).
///
/// The program gets a process group of its own, so cancelling the task
/// stops it and anything it started (SIGTERM, then SIGKILL after five
/// seconds). Standard error goes to a file rather than a pipe, so a chatty
/// program never blocks on a full pipe. The wait for its exit blocks a
/// thread of `threadPool`, never an event loop or a cooperative thread.
func runSubprocess(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                   threadPool: NIOThreadPool, scratchDirectory: String) async throws {
    let errorPath = "\(scratchDirectory)/stderr-\(UUID().uuidString)"
    defer { unlink(errorPath) }
    let pid = try spawn(executable, arguments, environment: environment, standardError: errorPath)

    let status: Int32 = try await withTaskCancellationHandler {
        try await threadPool.runIfActive {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            return status
        }
    } onCancel: {
        kill(-pid, SIGTERM)
        DispatchQueue.global().asyncAfter(deadline: .now() + 5) { kill(-pid, SIGKILL) }
    }
    try Task.checkCancellation()

    let signal = status & 0x7f
    let exitCode = (status >> 8) & 0xff
    guard signal != 0 || exitCode != 0 else { return }
    let standardError = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
    throw SubprocessError(command: URL(fileURLWithPath: executable).lastPathComponent,
                          outcome: signal != 0 ? "was killed by signal \(signal)" : "exited with status \(exitCode)",
                          standardError: String(standardError.suffix(2000)))
}

private func spawn(_ executable: String, _ arguments: [String], environment: [String: String], standardError: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, standardError, O_WRONLY | O_CREAT | O_TRUNC, 0o600)

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var defaultSignals = sigset_t()
    sigemptyset(&defaultSignals)
    for signal in [SIGTERM, SIGINT, SIGPIPE, SIGHUP, SIGQUIT] { sigaddset(&defaultSignals, signal) }
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
    posix_spawnattr_setpgroup(&attributes, 0)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    markDescriptorsCloseOnExec()
    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let envp: [UnsafeMutablePointer<CChar>?] = childEnvironment.merging(environment) { $1 }
        .map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
    guard result == 0 else {
        throw SubprocessError(command: executable, outcome: "could not start", standardError: String(cString: strerror(result)))
    }
    return pid
}

/// All that a child process sees of the environment besides what its caller
/// gives: nothing of backupd's own (no PG* variables, no HOME with its
/// `.pgpass` and client certificates).
private let childEnvironment = ["PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"]

/// Marks every descriptor above standard error close-on-exec, so a child
/// inherits nothing of ours: not client sockets, not catalog connections, not
/// descriptors our own parent left open.
private func markDescriptorsCloseOnExec() {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
    for descriptor in entries.compactMap({ Int32($0) }) where descriptor > 2 {
        let flags = fcntl(descriptor, F_GETFD)
        if flags >= 0 && flags & FD_CLOEXEC == 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
    }
}

/// Runs a PostgreSQL client tool (pg_dump, pg_restore) against a database.
/// The connection string goes to `--dbname` without its password, which goes
/// in PGPASSWORD, so no process listing shows it. While the tool runs,
/// `whileRunning` is called every half second, for progress.
func runPostgresTool(_ executable: String, _ arguments: [String], database connectionString: String,
                     threadPool: NIOThreadPool, scratchDirectory: String,
                     whileRunning: @escaping @Sendable () async -> Void) async throws {
    let (url, password) = try ConnectionString.withoutPassword(connectionString)
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            try await runSubprocess(executable, ["--dbname=\(url)"] + arguments,
                                    environment: password.map { ["PGPASSWORD": $0] } ?? [:],
                                    threadPool: threadPool, scratchDirectory: scratchDirectory)
        }
        group.addTask {
            while true {
                try await Task.sleep(for: .milliseconds(500))
                await whileRunning()
            }
        }
        try await group.next()
        group.cancelAll()
    }
}
