/// What a custom-format dump creates, read from `pg_restore --list` by its
/// fields: a restore is checked against it object by object.
///
/// A listing line is `ID; CATALOG OID DESC SCHEMA TAG OWNER`, where DESC may
/// be several words (`TABLE DATA`, `FK CONSTRAINT`) and SCHEMA and TAG may
/// hold spaces. A line counts as an object of a checked kind only when its
/// catalog is that kind's system catalog and DESC is that kind's, so a
/// `COMMENT … TABLE t` or a table in a schema named `DATA` is never taken for
/// something else.
public struct DumpListing: Sendable, Equatable {
    /// An object the dump creates, named as the listing names it:
    /// `SCHEMA TAG` (`public orders`, `public orders orders_pkey` for a
    /// constraint, `- 16390` for a large object).
    public struct Object: Hashable, Sendable, CustomStringConvertible {
        public let kind: Kind
        public let name: String

        public init(kind: Kind, name: String) {
            self.kind = kind
            self.name = name
        }

        public var description: String { "\(kind.label) \(name)" }
    }

    /// A kind of object checked after a restore, with the system catalog
    /// (by its fixed OID) that holds it.
    public enum Kind: String, Sendable, CaseIterable {
        case schema = "SCHEMA", table = "TABLE", view = "VIEW", materializedView = "MATERIALIZED VIEW"
        case sequence = "SEQUENCE", index = "INDEX", constraint = "CONSTRAINT", foreignKey = "FK CONSTRAINT"
        case checkConstraint = "CHECK CONSTRAINT", trigger = "TRIGGER", type = "TYPE", domain = "DOMAIN"
        case largeObject = "BLOB", largeObjectNewer = "LARGE OBJECT"

        public var label: String {
            switch self {
            case .largeObject, .largeObjectNewer: "LARGE OBJECT"
            default: rawValue
            }
        }

        /// The OID of the system catalog holding objects of this kind; the
        /// same in every PostgreSQL version.
        public var catalog: Int {
            switch self {
            case .schema: 2615                                        // pg_namespace
            case .table, .view, .materializedView, .sequence, .index: 1259   // pg_class
            case .constraint, .foreignKey, .checkConstraint: 2606    // pg_constraint
            case .trigger: 2620                                       // pg_trigger
            case .type, .domain: 1247                                 // pg_type
            case .largeObject, .largeObjectNewer: 2613                // pg_largeobject
            }
        }
    }

    public let objects: [Object]
    /// The listing's `SEQUENCE SET` lines: a listing of just these, given to
    /// `pg_restore -L`, yields the sequences' values.
    public let sequenceSetLines: [String]

    public init(_ listing: String) {
        var objects: [Object] = []
        var sequenceSets: [String] = []
        for line in listing.split(separator: "\n") where !line.hasPrefix(";") {
            let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count == 4, fields[0].hasSuffix(";"), let catalog = Int(fields[1]) else { continue }
            let rest = fields[3]
            if catalog == 0 && rest.hasPrefix("SEQUENCE SET ") { sequenceSets.append(String(line)) }
            // The longest description that fits, among the kinds stored in this catalog.
            guard let kind = Kind.allCases.filter({ $0.catalog == catalog && rest.hasPrefix($0.rawValue + " ") })
                .max(by: { $0.rawValue.count < $1.rawValue.count }) else { continue }
            // What follows is SCHEMA TAG OWNER; the owner (possibly empty) is the last word.
            let named = rest.dropFirst(kind.rawValue.count + 1)
            guard let lastSpace = named.lastIndex(of: " ") else { continue }
            objects.append(Object(kind: kind, name: String(named[..<lastSpace])))
        }
        self.objects = objects
        sequenceSetLines = sequenceSets
    }

    /// The dump's objects that `present` lacks, where `present` names what
    /// a database holds by catalog OID and listing-style name.
    public func missing(from present: Set<CatalogName>) -> [Object] {
        objects.filter { !present.contains(CatalogName(catalog: $0.kind.catalog, name: $0.name)) }
    }

    /// An object of a database, named by its system catalog and as a dump listing names it.
    public struct CatalogName: Hashable, Sendable {
        public let catalog: Int
        public let name: String

        public init(catalog: Int, name: String) {
            self.catalog = catalog
            self.name = name
        }
    }

    /// The query that names every object of a database the way `objects`
    /// names them, as rows of `catalog` and `name`.
    public static let catalogNamesQuery = """
        SELECT 2615 AS catalog, '- ' || nspname AS name FROM pg_namespace
        UNION ALL SELECT 1259, n.nspname || ' ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        UNION ALL SELECT 2606, n.nspname || ' ' || coalesce(c.relname, t.typname) || ' ' || con.conname
            FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
            LEFT JOIN pg_class c ON c.oid = con.conrelid LEFT JOIN pg_type t ON t.oid = con.contypid
        UNION ALL SELECT 2620, n.nspname || ' ' || c.relname || ' ' || tg.tgname
            FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        UNION ALL SELECT 1247, n.nspname || ' ' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        UNION ALL SELECT 2613, '- ' || oid FROM pg_largeobject_metadata
        """

    /// The sequence values in `pg_restore` output of `SEQUENCE SET` entries:
    /// `SELECT pg_catalog.setval('public.s', 42, true);` gives
    /// (`public.s`, 42, true). The name is SQL text for a `regclass`.
    public static func sequenceValues(in script: String) -> [(sequence: String, value: Int64, called: Bool)] {
        script.split(separator: "\n").compactMap { line in
            guard let match = line.wholeMatch(of: /SELECT pg_catalog\.setval\('((?:[^']|'')*)', (-?[0-9]+), (true|false)\);/),
                  let value = Int64(match.output.2) else { return nil }
            return (String(match.output.1).replacing("''", with: "'"), value, match.output.3 == "true")
        }
    }
}
