import ArgumentParser
import BackupClient
import BackupWire
import Foundation

/// Connection and output options every command takes.
/// Options read their environment variable when used, never as a declared
/// default, so `--help` never prints a token it found there.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("addr"), help: "Server address HOST:PORT, default 127.0.0.1:7443 (env BACKUPCTL_ADDR).")
    var addrOption: String?
    var addr: String { value(addrOption, "BACKUPCTL_ADDR", "127.0.0.1:7443") }

    @Option(name: .customLong("token"), help: "Bearer token (env BACKUPCTL_TOKEN).")
    var tokenOption: String?
    var token: String { value(tokenOption, "BACKUPCTL_TOKEN") }

    @Option(name: .customLong("ca"), help: "PEM file of the CA that signed the server certificate (env BACKUPCTL_CA).")
    var caOption: String?
    var ca: String { value(caOption, "BACKUPCTL_CA") }

    @Option(name: .customLong("cert"), help: "Client certificate (PEM) for servers that require mutual TLS (env BACKUPCTL_CERT).")
    var certOption: String?
    var cert: String { value(certOption, "BACKUPCTL_CERT") }

    @Option(name: .customLong("key"), help: "Key of the client certificate (env BACKUPCTL_KEY).")
    var keyOption: String?
    var key: String { value(keyOption, "BACKUPCTL_KEY") }

    @Flag(help: "Print JSON for scripts instead of tables; no progress bar.")
    var json = false

    /// Runs `body` on a connection, printing a server error and exiting
    /// non-zero if the call fails.
    func withClient<T: Sendable>(_ body: @Sendable (BackupClient) async throws -> T) async throws -> T {
        guard !token.isEmpty else { throw ValidationError("a token is required: --token or BACKUPCTL_TOKEN") }
        return try await reportingErrors { try await BackupClient.withConnection(try settings(), body) }
    }

    /// How to reach the server: its address, token and TLS trust.
    func settings() throws -> ClientSettings {
        var settings = try ClientSettings(address: addr, token: token, caFile: ca.isEmpty ? nil : ca)
        if !cert.isEmpty { settings.clientCertificate = (cert, key.isEmpty ? cert : key) }
        return settings
    }

    /// Runs `body`, printing a server error and exiting non-zero if it fails.
    func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as RPCError {
            printError("error: \(error.code): \(error.message)" + (error.requestID.isEmpty ? "" : " (request \(error.requestID))"))
            throw ExitCode(1)
        }
    }

    /// Prints a message as JSON, or as the human form `human` makes.
    func output<M: WireMessage>(_ message: M, human: (M) -> String) {
        print(json ? message.jsonText() : Format.terminalSafe(human(message), keepingNewlines: true))
    }
}

/// Up to `limit` items of a paged list, asking page after page (the server
/// may send fewer items than asked for, to fit its frame limit); returns
/// them with the token where the list goes on, empty at its end.
func collectPages<Item>(limit: Int = .max,
                        _ fetch: (_ pageSize: UInt32, _ pageToken: String) async throws -> (items: [Item], next: String))
    async throws -> (items: [Item], next: String) {
    var items: [Item] = []
    var next = ""
    repeat {
        let page = try await fetch(UInt32(min(500, limit - items.count)), next)
        items += page.items
        next = page.next
    } while !next.isEmpty && items.count < limit
    return (items, next)
}

extension EnvironmentRef: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension BackupKind: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

extension BackupStatus: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
}

/// An option's value, else its environment variable's, else `fallback`.
private func value(_ option: String?, _ variable: String, _ fallback: String = "") -> String {
    option ?? ProcessInfo.processInfo.environment[variable] ?? fallback
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((Format.terminalSafe(text, keepingNewlines: true) + "\n").utf8))
}
