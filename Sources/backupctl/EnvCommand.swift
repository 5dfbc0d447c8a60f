import ArgumentParser
import BackupClient
import BackupWire

struct EnvCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "env", abstract: "Register and manage app environments.",
        subcommands: [Register.self, ListEnvironments.self, ShowEnvironment.self, Update.self, Stop.self, Start.self, DeleteEnvironment.self])

    struct Register: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register an environment: where its database and files are (platform).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef
        @Option(help: "The app it runs.") var app: String
        @Option(help: "libpq connection string of the app database.") var databaseURL: String
        @Option(help: "Absolute path of the file store (xx/yy/uuid layout).") var fileStore: String
        @Option(help: "SQL listing the storage keys of referenced files (default: Mendix).") var fileQuery = ""
        @Option(help: "Deployed package version.") var packageVersion = ""
        @Flag(help: "Register it as stopped.") var stopped = false

        func run() async throws {
            let request = RegisterEnvironmentRequest.with {
                $0.namespace = env.namespace; $0.name = env.name; $0.app = app; $0.databaseURL = databaseURL
                $0.fileStorePath = fileStore; $0.fileQuery = fileQuery; $0.packageVersion = packageVersion
                $0.state = stopped ? .stopped : .running
            }
            let environment = try await global.withClient { try await $0.unary(Backups.registerEnvironment, request) }
            global.output(environment, human: Format.environment)
        }
    }

    struct ListEnvironments: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List a namespace's environments.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Namespace (default: your token's).") var namespace = ""

        func run() async throws {
            let namespace = namespace
            let response = try await global.withClient { client in
                let (environments, _) = try await collectPages { pageSize, pageToken in
                    let page = try await client.unary(Backups.listEnvironments, .with {
                        $0.namespace = namespace; $0.pageSize = pageSize; $0.pageToken = pageToken
                    })
                    return (page.environments, page.nextPageToken)
                }
                return ListEnvironmentsResponse.with { $0.environments = environments }
            }
            global.output(response) { r in
                Format.table(["ENVIRONMENT", "APP", "STATE", "PACKAGE", "BACKUPS"], r.environments.map {
                    ["\($0.namespace)/\($0.name)", $0.app, "\($0.state)", $0.packageVersion, "\($0.backupCount)"]
                })
            }
        }
    }

    struct ShowEnvironment: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show an environment.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef

        func run() async throws {
            let env = env
            let environment = try await global.withClient {
                try await $0.unary(Backups.getEnvironment, .with { $0.namespace = env.namespace; $0.name = env.name })
            }
            global.output(environment, human: Format.environment)
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change an environment; options not given stay as they are (admin for --app and --package-version, platform for the rest).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef
        @Option var app = ""
        @Option var databaseURL = ""
        @Option var fileStore = ""
        @Option var fileQuery = ""
        @Option(help: "Deployed package version.") var packageVersion = ""

        func run() async throws {
            let request = UpdateEnvironmentRequest.with {
                $0.namespace = env.namespace; $0.name = env.name; $0.app = app; $0.databaseURL = databaseURL
                $0.fileStorePath = fileStore; $0.fileQuery = fileQuery; $0.packageVersion = packageVersion
            }
            let environment = try await global.withClient { try await $0.unary(Backups.updateEnvironment, request) }
            global.output(environment, human: Format.environment)
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark an environment stopped (restores need it).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef
        func run() async throws { try await setState(env, .stopped, global) }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark an environment running.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef
        func run() async throws { try await setState(env, .running, global) }
    }

    struct DeleteEnvironment: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete an environment (platform).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAMESPACE/NAME") var env: EnvironmentRef
        @Flag(help: "Delete its backups too.") var force = false

        func run() async throws {
            let (env, force) = (env, force)
            let response = try await global.withClient {
                try await $0.unary(Backups.deleteEnvironment, .with { $0.namespace = env.namespace; $0.name = env.name; $0.force = force })
            }
            global.output(response) { "deleted \(env.namespace)/\(env.name) and \($0.deletedBackups) backups" }
        }
    }
}

private func setState(_ env: EnvironmentRef, _ state: EnvironmentState, _ global: GlobalOptions) async throws {
    let environment = try await global.withClient {
        try await $0.unary(Backups.setEnvironmentState, .with { $0.namespace = env.namespace; $0.name = env.name; $0.state = state })
    }
    global.output(environment, human: Format.environment)
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Create, list and revoke access tokens (admin in a namespace, or platform).",
        subcommands: [CreateToken.self, ListTokens.self, RevokeToken.self])

    struct CreateToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a token; its secret is shown once.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Namespace of the token; none for a platform token.") var namespace = ""
        @Option(help: "viewer, operator, admin, or platform (made only with a platform token).") var role: String
        @Option(help: "Who or what uses it.") var name: String

        func run() async throws {
            guard let role = Role(name: role), role != .unspecified else {
                throw ValidationError("--role must be viewer, operator, admin or platform")
            }
            let (namespace, name) = (namespace, name)
            let response = try await global.withClient {
                try await $0.unary(Backups.createToken, .with { $0.namespace = namespace; $0.role = role; $0.name = name })
            }
            global.output(response) { "\(Format.token($0.token))\nsecret     \($0.secret)" }
        }
    }

    struct ListTokens: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List a namespace's tokens.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Namespace (default: your token's).") var namespace = ""

        func run() async throws {
            let namespace = namespace
            let response = try await global.withClient { client in
                let (tokens, _) = try await collectPages { pageSize, pageToken in
                    let page = try await client.unary(Backups.listTokens, .with {
                        $0.namespace = namespace; $0.pageSize = pageSize; $0.pageToken = pageToken
                    })
                    return (page.tokens, page.nextPageToken)
                }
                return ListTokensResponse.with { $0.tokens = tokens }
            }
            global.output(response) { r in
                Format.table(["ID", "NAME", "ROLE", "CREATED", "REVOKED"], r.tokens.map {
                    [$0.id, $0.name, "\($0.role)", Format.time($0.createdUnixMS), Format.time($0.revokedUnixMS)]
                })
            }
        }
    }

    struct RevokeToken: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a token.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Token ID.") var id: String

        func run() async throws {
            let id = id
            let token = try await global.withClient { try await $0.unary(Backups.revokeToken, .with { $0.id = id }) }
            global.output(token, human: Format.token)
        }
    }
}
