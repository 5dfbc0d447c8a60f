import BackupCatalog
import BackupWire

/// Connections to an environment's own database server, for the jobs.
enum AppDatabase {
    /// Connects to the environment's database, or to `database` on the same
    /// server. Blocks: call it on the thread pool.
    static func connect(_ environment: Environment, database: String? = nil) throws -> PostgresConnection {
        do throws(PostgresError) {
            var url = environment.databaseURL
            if let database { url = try ConnectionString.replacingDatabase(in: url, with: database) }
            return try PostgresConnection(url)
        } catch {
            throw JobFailure(description: "database server of \(environment.namespace)/\(environment.name): \(error.message)")
        }
    }
}
