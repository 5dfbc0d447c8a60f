import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import NIOPosix

/// Where an environment's data lives: its database, file store and the
/// query that lists its file documents.
struct EnvironmentLocation: Sendable {
    var namespace: String
    var name: String
    var databaseURL: String
    var fileStorePath: String
    var fileQuery: String

    init(namespace: String, name: String, databaseURL: String, fileStorePath: String, fileQuery: String) {
        self.namespace = namespace
        self.name = name
        self.databaseURL = databaseURL
        self.fileStorePath = fileStorePath
        self.fileQuery = fileQuery
    }

    init(_ environment: Environment) {
        self.init(namespace: environment.namespace, name: environment.name, databaseURL: environment.databaseURL,
                  fileStorePath: environment.fileStorePath, fileQuery: environment.fileQuery)
    }
}

/// The checks that keep every environment's data where the platform and
/// backupd's operator allow: run when an environment is registered or
/// moved, and again before every job, since the disk and the database
/// servers may have changed in between.
struct Placement: Sendable {
    let fileStores: FileStoreRules
    let databases: AppDatabases
    let catalog: Catalog
    let threadPool: NIOThreadPool

    /// The location as it is kept (canonical file store path, the file
    /// query as it is run), or the reason it is refused.
    func check(_ location: EnvironmentLocation) async throws -> EnvironmentLocation {
        let query = try FileQuery(parsing: location.fileQuery)
        let connectionString = try databases.connectionString(location.databaseURL)
        let others = try await catalog.fileStores(excludingNamespace: location.namespace, name: location.name)
        let path = try await threadPool.runIfActive { [fileStores, databases] in
            let path = try fileStores.check(location.fileStorePath, others: others)
            let connection: PostgresConnection
            do {
                connection = try AppDatabases.pinned(PostgresConnection(connectionString))
            } catch let error as PostgresError {
                throw BackupError.failedPrecondition("the app database of \(location.namespace)/\(location.name) cannot be reached: \(error.message)")
            }
            try databases.refuseCatalog(on: connection)
            return path
        }
        var checked = location
        checked.fileStorePath = path
        checked.fileQuery = query.sql
        return checked
    }
}
