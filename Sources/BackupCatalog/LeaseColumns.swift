/// A lease kept in two columns of a row, who holds it and until when: a
/// job's runner (`jobs.lease_owner`, `lease_expires_at`) and an upload's
/// writing call (`uploads.writer`, `writer_until`). Every statement that
/// grants, extends, tests or ends one is built from here, so what "held"
/// and "run out" mean is written once, on the catalog's clock.
struct LeaseColumns {
    let owner: String
    let until: String

    static let job = LeaseColumns(owner: "lease_owner", until: "lease_expires_at")
    static let uploadWriter = LeaseColumns(owner: "writer", until: "writer_until")

    /// The same columns of a table named `alias` in the statement.
    func of(_ alias: String) -> LeaseColumns {
        LeaseColumns(owner: "\(alias).\(owner)", until: "\(alias).\(until)")
    }

    /// SET: the lease to the holder in parameter `holder`, for the seconds in parameter `seconds`.
    func grant(holder: Int, seconds: Int) -> String {
        "\(owner) = $\(holder), \(extend(seconds: seconds))"
    }

    /// SET: the lease runs for the seconds in parameter `seconds` from now.
    func extend(seconds: Int) -> String {
        "\(until) = now() + make_interval(secs => $\(seconds))"
    }

    /// SET: nobody holds the lease.
    var end: String { "\(owner) = NULL, \(until) = NULL" }

    /// WHERE: the holder in parameter `holder` has it.
    func heldBy(_ holder: Int) -> String { "\(owner) = $\(holder)" }

    /// WHERE: it has run out (its holder stopped renewing it).
    var runOut: String { "\(until) < now()" }

    /// WHERE: nobody holds it, or its holder let it run out.
    var free: String { "(\(owner) IS NULL OR \(runOut))" }
}
