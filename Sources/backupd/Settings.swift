import ArgumentParser
import BackupPostgres
import BackupStorage
import Foundation
import Yams

/// One setting of a command, read off its options: the name it has on the
/// command line (without `--`), in the environment and in a configuration file.
struct Setting: Sendable {
    enum Kind: Sendable { case value, list, flag }

    let name: String
    let kind: Kind

    /// `BACKUPD_` and the name in capitals, then the older or wider-known names some settings also answer to.
    var environmentVariables: [String] {
        ["BACKUPD_" + name.uppercased().replacingOccurrences(of: "-", with: "_")] + (Self.aliases[name] ?? [])
    }

    private static let aliases = [
        "cert": ["BACKUPD_TLS_CERT"], "key": ["BACKUPD_TLS_KEY"], "client-ca": ["BACKUPD_TLS_CLIENT_CA"],
        "s3-region": ["AWS_REGION"], "s3-access-key-id": ["AWS_ACCESS_KEY_ID"],
    ]

    /// The settings of `command`, its option groups' included, in the order `--help` shows them.
    static func of(_ command: any ParsableArguments.Type) -> [Setting] {
        Mirror(reflecting: command.init()).children.flatMap { child -> [Setting] in
            guard let label = child.label?.dropFirst() else { return [] }  // the wrapper's storage: "_maxJobs"
            let name = String(label).convertedToOptionName
            switch child.value {
            case let group as any SettingGroup: return of(group.argumentsType)
            case let option as any ParsedSetting: return [Setting(name: name, kind: option.kind)]
            default: return []
            }
        }
    }

    /// The values of `command`'s settings once parsed, by name.
    static func values(of command: any ParsableArguments) -> [String: Any] {
        var values: [String: Any] = [:]
        for child in Mirror(reflecting: command).children {
            guard let label = child.label?.dropFirst() else { continue }
            switch child.value {
            case let group as any SettingGroup: values.merge(Self.values(of: group.arguments)) { first, _ in first }
            case let option as any ParsedSetting: values[String(label).convertedToOptionName] = option.parsedValue
            default: continue
            }
        }
        return values
    }
}

/// An `@OptionGroup`, whose settings are its arguments type's.
private protocol SettingGroup {
    var argumentsType: any ParsableArguments.Type { get }
    var arguments: any ParsableArguments { get }
}

extension OptionGroup: SettingGroup {
    var argumentsType: any ParsableArguments.Type { Value.self }
    var arguments: any ParsableArguments { wrappedValue }
}

/// An `@Option` or `@Flag`: what kind of value it takes, and the value parsed.
private protocol ParsedSetting {
    var kind: Setting.Kind { get }
    var parsedValue: Any { get }
}

/// Arrays: an option declared as one is repeatable.
private protocol ListValue {}
extension Array: ListValue {}

extension Option: ParsedSetting {
    var kind: Setting.Kind { Value.self is any ListValue.Type ? .list : .value }
    var parsedValue: Any { wrappedValue }
}

extension Flag: ParsedSetting {
    var kind: Setting.Kind { .flag }
    var parsedValue: Any { wrappedValue }
}

extension String {
    /// A property's name as ArgumentParser names its option: `maxJobs` is `max-jobs`, `publicURL` is `public-url`.
    fileprivate var convertedToOptionName: String {
        var result = ""
        var separateOnUppercase = true
        for index in indices {
            let character = self[index]
            if character.isUppercase {
                if separateOnUppercase && !result.isEmpty { result += "-" }
                // In an acronym followed by a word ("URLSession"), the acronym's last capital starts the word.
                let next = self.index(after: index)
                separateOnUppercase = next < endIndex && self[next].isUppercase && self.index(after: next) < endIndex
                    && self[self.index(after: next)].isLowercase
            } else {
                separateOnUppercase = true
            }
            result += character.lowercased()
        }
        return result
    }
}

/// Where a setting's value came from.
enum SettingOrigin: Sendable, Equatable, CustomStringConvertible {
    case commandLine
    case environment(String)
    case file(String)

    var description: String {
        switch self {
        case .commandLine: "command line"
        case .environment(let variable): "environment \(variable)"
        case .file(let path): path
        }
    }
}

/// A configuration file or environment variable that cannot be used; nothing starts.
struct SettingsError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A YAML configuration file: a mapping of setting names to values (a list
/// for a repeatable setting, true or false for a switch). A name the
/// command does not have is refused rather than ignored, so that a
/// misspelt limit never silently stays at its default.
struct ConfigurationFile: Sendable {
    /// The file's settings as command-line arguments, by setting name.
    let arguments: [String: [String]]

    init(path: String, settings: [Setting]) throws(SettingsError) {
        let bytes: [UInt8]
        do {
            bytes = try readSmallFile(path, "the configuration file")
        } catch {
            throw SettingsError("\(error)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw SettingsError("the configuration file \(path) is not UTF-8 text") }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw SettingsError("the configuration file \(path) is not YAML: \(Self.problem(error))")
        }
        guard let root else { arguments = [:]; return }  // an empty file sets nothing
        guard let mapping = root.mapping else {
            throw SettingsError("the configuration file \(path) must be a mapping of setting names to values")
        }
        let byName = Dictionary(settings.map { ($0.name, $0) }) { first, _ in first }
        var arguments: [String: [String]] = [:]
        for (keyNode, valueNode) in mapping {
            let place = "\(path):\(keyNode.mark.map { "\($0.line)" } ?? "?")"
            guard case .scalar = keyNode, let key = keyNode.string else { throw SettingsError("\(place): a setting's name must be a plain word") }
            guard let setting = byName[key] else {
                let near = settings.map(\.name).filter { editDistance(key, $0) <= 2 }
                throw SettingsError("\(place): backupd has no setting \"\(key)\""
                                    + (near.isEmpty ? "" : " (did you mean \(near.joined(separator: " or "))?)"))
            }
            if case .scalar(let scalar) = valueNode, NSNull.construct(from: scalar) != nil { continue }  // `key:` with no value sets nothing
            arguments[key] = try Self.arguments(setting, valueNode, place: place)
        }
        self.arguments = arguments
    }

    /// What Yams found wrong, with where, but without the text around it: a line of the file may hold a secret.
    private static func problem(_ error: any Error) -> String {
        switch error as? YamlError {
        case let .scanner(_, problem, mark, _)?, let .parser(_, problem, mark, _)?, let .composer(_, problem, mark, _)?:
            "\(problem) at line \(mark.line), column \(mark.column)"
        case let .duplicatedKeysInMapping(duplicates, context)?:
            "\(duplicates.joined(separator: ", ")) set more than once in the mapping at line \(context.mark.line)"
        case let .reader(problem, _, _, _)?: problem
        default: "unreadable"
        }
    }

    private static func arguments(_ setting: Setting, _ node: Node, place: String) throws(SettingsError) -> [String] {
        switch (setting.kind, node) {
        case (.flag, .scalar(let scalar)):
            guard let on = Bool.construct(from: scalar) else { throw SettingsError("\(place): \(setting.name) takes true or false") }
            return [on ? "--\(setting.name)" : "--no-\(setting.name)"]
        case (.value, .scalar(let scalar)), (.list, .scalar(let scalar)):
            return ["--\(setting.name)=\(scalar.string)"]
        case (.list, .sequence(let items)):
            var arguments: [String] = []
            for item in items {
                guard case .scalar(let scalar) = item else { throw SettingsError("\(place): \(setting.name) takes a list of values") }
                arguments.append("--\(setting.name)=\(scalar.string)")
            }
            return arguments
        default:
            throw SettingsError("\(place): \(setting.name) takes " + (setting.kind == .list ? "a value or a list of values" : "one value"))
        }
    }
}

/// A command line with the settings it leaves out taken from the
/// environment, then from the configuration file, so that ArgumentParser
/// parses and checks every value once, wherever it came from.
struct LayeredArguments: Sendable {
    /// What ArgumentParser parses.
    let arguments: [String]
    /// Where each setting given anywhere came from.
    let origins: [String: SettingOrigin]

    /// The settings the command line `arguments` (the subcommand's name
    /// first, if any) runs with: `serve` and `config check` take every
    /// setting of serve from variables and the configuration file, `keys`
    /// and `store` theirs from serve's variables and file, `token create`
    /// only the catalog's variable; other commands read their own.
    static func resolving(_ arguments: [String], environment: [String: String]) throws(SettingsError) -> LayeredArguments {
        // --help and --version need no settings, and must work whatever the environment holds.
        if arguments.contains(where: { ["-h", "--help", "--version", "--experimental-dump-help"].contains($0) }) || arguments.first == "help" {
            return LayeredArguments(arguments: arguments, origins: [:])
        }
        let (command, readsFile): (any ParsableArguments.Type, Bool)
        switch (arguments.first, arguments.dropFirst().first) {
        case ("config", "check"): (command, readsFile) = (ServeOptions.self, true)
        case ("keys", _), ("store", _):
            // serve's own file: its other settings are known, and left to serve.
            let command: any ParsableArguments.Type = arguments.first == "keys" ? KeysOptions.self : StoreOptions.self
            return try LayeredArguments(arguments, settings: Setting.of(command), fileSettings: Setting.of(ServeOptions.self),
                                        environment: environment, readsFile: true)
        case ("token", "create"): (command, readsFile) = (CatalogOptions.self, false)
        case (nil, _), ("serve", _): (command, readsFile) = (ServeOptions.self, true)
        case (let first?, _) where first.hasPrefix("-"): (command, readsFile) = (ServeOptions.self, true)  // serve, the default
        default: return LayeredArguments(arguments: arguments, origins: [:])
        }
        return try LayeredArguments(arguments, settings: Setting.of(command).filter { !ServeOptions.testOnly.contains($0.name) },
                                    environment: environment, readsFile: readsFile)
    }

    /// `fileSettings`: what the file may hold (by default, `settings`), of which only `settings` are taken.
    init(_ commandLine: [String], settings: [Setting], fileSettings: [Setting]? = nil, environment: [String: String],
         readsFile: Bool) throws(SettingsError) {
        // Options after "--" are operands, not options.
        let options = commandLine.prefix { $0 != "--" }
        func given(_ setting: Setting) -> Bool {
            options.contains { $0 == "--\(setting.name)" || $0.hasPrefix("--\(setting.name)=") || $0 == "--no-\(setting.name)" }
        }
        var origins: [String: SettingOrigin] = [:]
        var added: [String] = []
        var unset: [Setting] = []
        for setting in settings {
            if given(setting) {
                origins[setting.name] = .commandLine
            } else if let variable = setting.environmentVariables.first(where: { environment[$0] != nil }), let value = environment[variable] {
                origins[setting.name] = .environment(variable)
                if setting.kind == .flag {
                    guard let on = Bool(flag: value) else { throw SettingsError("\(variable)=\(value): \(setting.name) takes true or false") }
                    added.append(on ? "--\(setting.name)" : "--no-\(setting.name)")
                } else {
                    added.append("--\(setting.name)=\(value)")
                }
            } else {
                unset.append(setting)
            }
        }
        if readsFile, let path = Self.configurationPath(options, origins: origins, environment: environment) {
            let file = try ConfigurationFile(path: path, settings: (fileSettings ?? settings).filter { $0.name != "config" })
            for setting in unset {
                guard let arguments = file.arguments[setting.name] else { continue }
                origins[setting.name] = .file(path)
                added += arguments
            }
        }
        // The added options go before any "--", with the command's own.
        let split = commandLine.firstIndex(of: "--") ?? commandLine.endIndex
        self.arguments = Array(commandLine[..<split]) + added + Array(commandLine[split...])
        self.origins = origins
    }

    private init(arguments: [String], origins: [String: SettingOrigin]) {
        self.arguments = arguments
        self.origins = origins
    }

    /// The configuration file named by --config or BACKUPD_CONFIG.
    private static func configurationPath(_ options: ArraySlice<String>, origins: [String: SettingOrigin],
                                          environment: [String: String]) -> String? {
        switch origins["config"] {
        case .commandLine:
            // The last given, as ArgumentParser takes it.
            for (index, option) in options.enumerated().reversed() {
                if option.hasPrefix("--config=") { return String(option.dropFirst("--config=".count)) }
                if option == "--config" { return options.dropFirst(index + 1).first }
            }
            return nil
        case .environment(let variable): return environment[variable]
        default: return nil
        }
    }

    /// For an error ArgumentParser found: which of the settings it names came from the environment or the file.
    func origins(namedIn message: String) -> String? {
        let named = origins.filter { origin in
            origin.value != .commandLine && message.ranges(of: "--\(origin.key)").contains { range in
                // The whole option: --max-connections is not --max-connections-per-peer.
                range.upperBound == message.endIndex || !(message[range.upperBound].isLetter || message[range.upperBound].isNumber
                                                           || message[range.upperBound] == "-")
            }
        }.sorted { $0.key < $1.key }
        guard !named.isEmpty else { return nil }
        return named.map { "--\($0.key) was set by \($0.value)" }.joined(separator: "; ")
    }
}

extension Bool {
    /// A switch's value in an environment variable.
    init?(flag: String) {
        switch flag.lowercased() {
        case "true", "1", "yes", "on": self = true
        case "false", "0", "no", "off": self = false
        default: return nil
        }
    }
}

/// The effective settings as `backupd config check` prints them: YAML a
/// configuration file could hold, each line saying where its value came
/// from, secrets redacted.
enum SettingsReport {
    static func render(_ settings: [Setting], values: [String: Any], origins: [String: SettingOrigin]) -> String {
        settings.map { setting in
            let origin = origins[setting.name]?.description ?? "default"
            guard let value = values[setting.name], let text = render(value, secret: setting.name == "catalog") else {
                return "# \(setting.name): not set  (\(origin))"
            }
            return "\(setting.name): \(text)  # \(origin)"
        }.joined(separator: "\n")
    }

    private static func render(_ value: Any, secret: Bool) -> String? {
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .optional {
            guard let wrapped = mirror.children.first?.value else { return nil }
            return render(wrapped, secret: secret)
        }
        switch value {
        case let list as [String]: return "[" + list.map(quoted).joined(separator: ", ") + "]"
        // The catalog's connection string, with its password (and any other credential) replaced.
        case let string as String where secret: return quoted(ConnectionString.redacted(string))
        case let string as String: return quoted(string)
        default: return "\(value)"
        }
    }

    /// A YAML string in double quotes (JSON's escapes are YAML's).
    private static func quoted(_ string: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        return String(decoding: try! encoder.encode(string), as: UTF8.self)
    }
}

/// How many single-character edits turn `a` into `b`: a misspelt setting's likely meaning.
private func editDistance(_ a: String, _ b: String) -> Int {
    let b = Array(b)
    var previous = Array(0...b.count)
    for (i, x) in a.enumerated() {
        var current = [i + 1]
        for (j, y) in b.enumerated() {
            current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
        }
        previous = current
    }
    return previous[b.count]
}
