/// The query that lists an environment's file documents, limited to one
/// shape: `SELECT column FROM [schema.]table [WHERE conditions]`, where a
/// condition only compares the table's columns with constants
/// (`col`, `NOT col`, `col = 'x'`, `col IS [NOT] NULL|TRUE|FALSE`, joined by
/// AND, OR and parentheses). The text is parsed and rendered again with every
/// name quoted, so no function call (`pg_read_file`, `pg_sleep`), subquery,
/// `COPY`, comment or second statement can reach the app database.
public struct FileQuery: Sendable, Equatable {
    public let column: String
    public let schema: String?
    public let table: String
    public let condition: Condition?

    public indirect enum Condition: Sendable, Equatable {
        case column(String)
        case not(Condition)
        case and(Condition, Condition)
        case or(Condition, Condition)
        case isNull(String, negated: Bool)
        case isBoolean(String, Bool, negated: Bool)
        case compare(String, String, Literal)
    }

    public enum Literal: Sendable, Equatable {
        case string(String)
        case number(String)
        case boolean(Bool)
    }

    /// Parses a query, or says what about it is not allowed.
    public init(parsing text: String) throws(BackupError) {
        var parser = Parser(tokens: try tokenize(text))
        try parser.expectKeyword("select")
        column = try parser.identifier()
        try parser.expectKeyword("from")
        let first = try parser.identifier()
        if parser.take(.symbol(".")) {
            schema = first
            table = try parser.identifier()
        } else {
            schema = nil
            table = first
        }
        condition = parser.take(.keyword("where")) ? try parser.disjunction() : nil
        guard parser.atEnd else { throw parser.unexpected("the end of the query") }
    }

    /// The query as it is run: every name quoted, constants rendered anew.
    public var sql: String {
        var text = "SELECT \(quoted(column)) FROM " + (schema.map { quoted($0) + "." } ?? "") + quoted(table)
        if let condition { text += " WHERE " + render(condition) }
        return text
    }

    /// Which of the keys in the text-array parameter `$1` the query lists
    /// now: for telling a file deleted with its row from one that is missing.
    public var sqlAmongKeys: String {
        "SELECT \(quoted(column))::text FROM " + (schema.map { quoted($0) + "." } ?? "") + quoted(table)
            + " WHERE \(quoted(column))::text = ANY($1::text[])" + (condition.map { " AND " + render($0) } ?? "")
    }

    static func refusal(_ problem: String) -> BackupError {
        .invalidArgument(
            "file_query must be SELECT <column> FROM <table> [WHERE <conditions on its columns>], with no function calls, "
                + "subqueries or further statements: \(problem)")
    }
}

private func quoted(_ name: String) -> String {
    "\"" + name.replacing("\"", with: "\"\"") + "\""
}

private func render(_ condition: FileQuery.Condition) -> String {
    switch condition {
    case let .column(name): quoted(name)
    case let .not(inner): "(NOT \(render(inner)))"
    case let .and(left, right): "(\(render(left)) AND \(render(right)))"
    case let .or(left, right): "(\(render(left)) OR \(render(right)))"
    case let .isNull(name, negated): "(\(quoted(name)) IS \(negated ? "NOT " : "")NULL)"
    case let .isBoolean(name, value, negated): "(\(quoted(name)) IS \(negated ? "NOT " : "")\(value ? "TRUE" : "FALSE"))"
    case let .compare(name, op, literal): "(\(quoted(name)) \(op) \(render(literal)))"
    }
}

private func render(_ literal: FileQuery.Literal) -> String {
    switch literal {
    case let .string(text): "'" + text.replacing("'", with: "''") + "'"
    case let .number(text): text
    case let .boolean(value): value ? "TRUE" : "FALSE"
    }
}

private enum Token: Equatable {
    case keyword(String)      // lower case
    case identifier(String)   // a quoted name, or a bare one folded to lower case
    case string(String)
    case number(String)
    case symbol(String)
}

private let keywords: Set<String> = ["select", "from", "where", "and", "or", "not", "is", "null", "true", "false"]
private let operators: Set<String> = ["=", "<>", "!=", "<", ">", "<=", ">="]

private func tokenize(_ text: String) throws(BackupError) -> [Token] {
    let scalars = Array(text.unicodeScalars)
    var tokens: [Token] = []
    var index = 0
    func isNameStart(_ c: Unicode.Scalar) -> Bool { c == "_" || ("a"..."z").contains(c) || ("A"..."Z").contains(c) }
    func isNamePart(_ c: Unicode.Scalar) -> Bool { isNameStart(c) || ("0"..."9").contains(c) || c == "$" }
    while index < scalars.count {
        let c = scalars[index]
        if c == " " || c == "\t" || c == "\n" || c == "\r" {
            index += 1
        } else if isNameStart(c) {
            var end = index
            while end < scalars.count, isNamePart(scalars[end]) { end += 1 }
            let word = String(String.UnicodeScalarView(scalars[index..<end])).lowercased()
            tokens.append(keywords.contains(word) ? .keyword(word) : .identifier(word))
            index = end
        } else if c == "\"" || c == "'" {
            var value = String.UnicodeScalarView()
            var end = index + 1
            while true {
                guard end < scalars.count else { throw FileQuery.refusal("a quoted name or string is not closed") }
                if scalars[end] == c {
                    if end + 1 < scalars.count, scalars[end + 1] == c { value.append(c); end += 2; continue }
                    break
                }
                guard scalars[end] != "\\" || c == "\"" else { throw FileQuery.refusal("backslashes are not allowed in strings") }
                value.append(scalars[end])
                end += 1
            }
            let string = String(value)
            guard !string.isEmpty || c == "'" else { throw FileQuery.refusal("a quoted name is empty") }
            tokens.append(c == "\"" ? .identifier(string) : .string(string))
            index = end + 1
        } else if ("0"..."9").contains(c) {
            var end = index
            while end < scalars.count, ("0"..."9").contains(scalars[end]) || scalars[end] == "." { end += 1 }
            let number = String(String.UnicodeScalarView(scalars[index..<end]))
            guard Double(number) != nil else { throw FileQuery.refusal("\(number) is not a number") }
            tokens.append(.number(number))
            index = end
        } else if index + 1 < scalars.count, operators.contains(String(c) + String(scalars[index + 1])) {
            tokens.append(.symbol(String(c) + String(scalars[index + 1])))
            index += 2
        } else if operators.contains(String(c)) || c == "(" || c == ")" || c == "." {
            tokens.append(.symbol(String(c)))
            index += 1
        } else {
            throw FileQuery.refusal("the character '\(c.escaped(asASCII: true))' is not allowed")
        }
    }
    return tokens
}

private struct Parser {
    let tokens: [Token]
    var position = 0

    var atEnd: Bool { position == tokens.count }

    mutating func take(_ token: Token) -> Bool {
        guard position < tokens.count, tokens[position] == token else { return false }
        position += 1
        return true
    }

    func unexpected(_ wanted: String) -> BackupError {
        guard position < tokens.count else { return FileQuery.refusal("it ends where \(wanted) should be") }
        let found: String = switch tokens[position] {
        case let .keyword(word): word.uppercased()
        case .identifier: "a name"
        case .string: "a string"
        case .number: "a number"
        case let .symbol(symbol): "'\(symbol)'"
        }
        return FileQuery.refusal("found \(found) where \(wanted) should be")
    }

    mutating func expectKeyword(_ word: String) throws(BackupError) {
        guard take(.keyword(word)) else { throw unexpected(word.uppercased()) }
    }

    mutating func identifier() throws(BackupError) -> String {
        guard position < tokens.count, case let .identifier(name) = tokens[position] else { throw unexpected("a name") }
        position += 1
        if position < tokens.count, tokens[position] == .symbol("(") {
            throw FileQuery.refusal("function calls are not allowed")
        }
        return name
    }

    mutating func disjunction() throws(BackupError) -> FileQuery.Condition {
        var condition = try conjunction()
        while take(.keyword("or")) { condition = .or(condition, try conjunction()) }
        return condition
    }

    mutating func conjunction() throws(BackupError) -> FileQuery.Condition {
        var condition = try negation()
        while take(.keyword("and")) { condition = .and(condition, try negation()) }
        return condition
    }

    mutating func negation() throws(BackupError) -> FileQuery.Condition {
        if take(.keyword("not")) { return .not(try negation()) }
        if take(.symbol("(")) {
            let inner = try disjunction()
            guard take(.symbol(")")) else { throw unexpected("')'") }
            return inner
        }
        let name = try identifier()
        if take(.keyword("is")) {
            let negated = take(.keyword("not"))
            if take(.keyword("null")) { return .isNull(name, negated: negated) }
            if take(.keyword("true")) { return .isBoolean(name, true, negated: negated) }
            if take(.keyword("false")) { return .isBoolean(name, false, negated: negated) }
            throw unexpected("NULL, TRUE or FALSE")
        }
        if position < tokens.count, case let .symbol(op) = tokens[position], operators.contains(op) {
            position += 1
            return .compare(name, op == "!=" ? "<>" : op, try literal())
        }
        return .column(name)
    }

    mutating func literal() throws(BackupError) -> FileQuery.Literal {
        guard position < tokens.count else { throw unexpected("a constant") }
        let token = tokens[position]
        position += 1
        switch token {
        case let .string(text): return .string(text)
        case let .number(text): return .number(text)
        case .keyword("true"): return .boolean(true)
        case .keyword("false"): return .boolean(false)
        default:
            position -= 1
            throw unexpected("a constant")
        }
    }
}
