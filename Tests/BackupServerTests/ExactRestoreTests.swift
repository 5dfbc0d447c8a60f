import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Objects of most kinds PostgreSQL has, added to a copy of the demo app:
/// the restore must bring each back and its check must pass.
let variedSchema = """
    CREATE SCHEMA "billing area";
    COMMENT ON SCHEMA "billing area" IS 'money';
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
    CREATE TABLE "billing area"."ledger entry" (
        id serial PRIMARY KEY, amount positive NOT NULL, feeling mood, doubled integer GENERATED ALWAYS AS (amount * 2) STORED
    );
    COMMENT ON TABLE "billing area"."ledger entry" IS 'one line of the ledger';
    COMMENT ON COLUMN "billing area"."ledger entry".amount IS 'in cents';
    CREATE TABLE readings (at date NOT NULL, value double precision) PARTITION BY RANGE (at);
    CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    CREATE TABLE readings_2027 PARTITION OF readings FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
    CREATE INDEX readings_at ON readings (at);
    CREATE TABLE notes (id bigint PRIMARY KEY, entry integer REFERENCES "billing area"."ledger entry", body text UNIQUE);
    CREATE VIEW calm_entries AS SELECT * FROM "billing area"."ledger entry" WHERE feeling = 'calm';
    CREATE MATERIALIZED VIEW totals AS SELECT feeling, sum(amount) AS total FROM "billing area"."ledger entry" GROUP BY feeling;
    CREATE SEQUENCE invoice_numbers START 1000;
    CREATE SEQUENCE never_used;
    CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.body := coalesce(NEW.body, 'note ' || NEW.id); RETURN NEW; END $$;
    CREATE TRIGGER notes_stamp BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION stamp();
    INSERT INTO "billing area"."ledger entry" (amount, feeling) SELECT i, (ARRAY['calm', 'busy'])[1 + i % 2]::mood FROM generate_series(1, 500) i;
    INSERT INTO readings SELECT date '2026-01-01' + i, i * 0.5 FROM generate_series(0, 600) i;
    INSERT INTO notes (id, entry) SELECT i, i FROM generate_series(1, 50) i;
    REFRESH MATERIALIZED VIEW totals;
    SELECT nextval('invoice_numbers') FROM generate_series(1, 17);
    SELECT lo_from_bytea(0, convert_to(repeat('large object ', 5000), 'UTF8'));
    SELECT lo_from_bytea(0, '\\x00ff00ff'::bytea);
    """

/// Everything about a database a restore must bring back, object by object
/// and row by row, read with queries of its own (not the restore's check).
func databaseContents(_ database: String) throws -> [String] {
    let userSchemas = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
    var contents: [String] = []
    func lines(_ sql: String) throws -> [String] {
        try TestPostgres.query(database, sql).map { $0.string("line") }
    }
    contents += try lines("SELECT 'schema ' || nspname || ' ' || coalesce(obj_description(n.oid, 'pg_namespace'), '') AS line FROM pg_namespace n WHERE \(userSchemas) ORDER BY 1")
    contents += try lines("""
        SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '') AS line
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE \(userSchemas) ORDER BY 1
        """)
    contents += try lines("""
        SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attgenerated::text
               || ' ' || coalesce(col_description(c.oid, a.attnum), '') AS line
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE \(userSchemas) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1
        """)
    contents += try lines("""
        SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(con.oid) AS line
        FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace WHERE \(userSchemas) ORDER BY 1
        """)
    contents += try lines("SELECT 'index ' || indexdef AS line FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1")
    contents += try lines("SELECT 'trigger ' || tgname || ' ' || pg_get_triggerdef(oid) AS line FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1")
    contents += try lines("""
        SELECT 'type ' || n.nspname || '.' || t.typname || ' ' || t.typtype::text AS line FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE \(userSchemas) AND t.typtype IN ('e', 'd') ORDER BY 1
        """)
    contents += try lines("SELECT 'enum ' || enumlabel AS line FROM pg_enum ORDER BY enumsortorder")
    contents += try lines("SELECT 'function ' || p.proname || ' ' || md5(p.prosrc) AS line FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE \(userSchemas) ORDER BY 1")
    contents += try lines("""
        SELECT 'sequence ' || schemaname || '.' || sequencename || ' ' || coalesce(last_value::text, 'unused') AS line FROM pg_sequences ORDER BY 1
        """)
    contents += try lines("SELECT 'large object ' || oid || ' ' || md5(lo_get(oid)) AS line FROM pg_largeobject_metadata ORDER BY oid")
    let tables = try TestPostgres.query(database, """
        SELECT format('%I.%I', n.nspname, c.relname) AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE \(userSchemas) AND c.relkind IN ('r', 'm') ORDER BY 1
        """).map { $0.string("name") }
    for table in tables {
        contents += try lines("SELECT 'rows \(table) ' || count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS line FROM \(table) t")
    }
    return contents
}

@Suite(.serialized) struct ExactRestoreTests {
    @Test func aDatabaseUsingMuchOfPostgreSQLRestoresObjectByObjectAndRowByRow() async throws {
        try await withTestApp { app in
            let psql = try await runCommand("/usr/bin/psql", ["-v", "ON_ERROR_STOP=1", "-q", "-d", app.connectionString, "-c", variedSchema])
            try #require(psql.status == 0, "\(psql.standardError)")
            try await withInProcessServer { server in
                let atBackup = try databaseContents(app.database)
                let backup = try await finishedBackup(server, app)
                try await TestPostgres.query(app.database, "DROP VIEW calm_entries")
                try await TestPostgres.query(app.database, "DELETE FROM readings WHERE value > 100")
                try await TestPostgres.query(app.database, "SELECT nextval('invoice_numbers')")
                try await TestPostgres.query(app.database, "SELECT lo_unlink(min(oid)) FROM pg_largeobject_metadata")
                #expect(try databaseContents(app.database) != atBackup)

                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .finished, "\(job.error)")
                let restored = try databaseContents(app.database)
                #expect(restored == atBackup, "\(Set(restored).symmetricDifference(atBackup).sorted())")
            }
        }
    }

    /// A restore whose staging database lacks one of the dump's objects
    /// fails naming it, and the target is untouched. The lack is made by a
    /// pg_restore that leaves the view out.
    @Test func aRestoreLackingAnObjectOfTheDumpFailsNamingItAndChangesNothing() async throws {
        try await withTestApp { app in
            let psql = try await runCommand("/usr/bin/psql", ["-v", "ON_ERROR_STOP=1", "-q", "-d", app.connectionString, "-c", variedSchema])
            try #require(psql.status == 0, "\(psql.standardError)")
            // Every real restore runs with --jobs; the listing (--list) and sequence script (--use-list) pass through.
            let dropsView = try wrappedTool("pg_restore", running: """
                case "$*" in *--jobs*) /usr/bin/pg_restore "$@" || exit $?; for a in "$@"; do case "$a" in --dbname=*) db="${a#--dbname=}";; esac; done
                  /usr/bin/psql -q -d "$db" -c 'DROP VIEW calm_entries' || exit 1; exit 0;; esac
                """)
            try await withInProcessServer(configure: { $0.jobs.tools.pgRestore = dropsView }) { server in
                let backup = try await finishedBackup(server, app)
                try await TestPostgres.query(app.database, "DROP VIEW calm_entries")
                let before = try databaseContents(app.database)
                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .failed)
                #expect(job.error.contains("the restored database lacks 1 of the dump's") && job.error.contains("VIEW public calm_entries"), "\(job.error)")
                #expect(try databaseContents(app.database) == before)
                try noStagingLeft(app)
            }
        }
    }
}

@Suite(.serialized) struct PinnedBackupTests {
    /// A backup that a queued or running restore reads cannot be deleted,
    /// alone or with its environment; both restores then finish with every file.
    @Test func aBackupInUseByARestoreCannotBeDeletedAndTheRestoresFinishWithEveryFile() async throws {
        try await withTestApp { source in
            try await withTestApp { other in
                // Each restore's pg_restore waits while its gate file exists, so the test decides when each may end.
                let gates = try ScratchDirectory("restore-gates")
                defer { gates.remove() }
                let (sourceGate, otherGate) = (gates.path + "/source", gates.path + "/other")
                for gate in [sourceGate, otherGate] { _ = FileManager.default.createFile(atPath: gate, contents: nil) }
                let gated = try wrappedTool("pg_restore", running: """
                    gate=
                    case "$*" in *--jobs*) case "$*" in *\(source.database)_restore_*) gate=\(sourceGate);; *) gate=\(otherGate);; esac;; esac
                    while [ -n "$gate" ] && [ -e "$gate" ]; do sleep 0.1; done
                    """)
                try await withInProcessServer(configure: { $0.jobs.maximumConcurrentJobs = 1; $0.jobs.tools.pgRestore = gated }) { server in
                    let backup = try await finishedBackup(server, source)
                    try await server.register(other, as: "shop-acceptance")
                    try await server.withClient { client in
                        _ = try await client.unary(Backups.setEnvironmentState, .with {
                            $0.namespace = TestServer.namespace; $0.name = "shop-acceptance"; $0.state = .stopped
                        })
                        let intoSource = try await client.unary(Backups.restoreBackup, .with {
                            $0.backupID = backup.id; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = "shop-production"
                        })
                        let intoOther = try await client.unary(Backups.restoreBackup, .with {
                            $0.backupID = backup.id; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = "shop-acceptance"
                        })
                        // The second restore waits for the only job slot: refused while it is queued…
                        #expect(try await client.unary(Backups.getJob, .with { $0.id = intoOther.id }).status == .queued)
                        let whileQueued = await expectStatus(.failedPrecondition) {
                            _ = try await client.unary(Backups.deleteBackup, .with { $0.id = backup.id })
                        }
                        #expect(whileQueued?.message.contains("is in use by restore job") == true, "\(String(describing: whileQueued))")
                        unlink(sourceGate)
                        let first = try await waitForJob(intoSource.id, on: client)
                        #expect(first.status == .finished, "\(first.error)")

                        // …and while it runs, with the environment the backup belongs to as well.
                        while try await client.unary(Backups.getJob, .with { $0.id = intoOther.id }).status == .queued {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                        let deleteBackup = await expectStatus(.failedPrecondition) {
                            _ = try await client.unary(Backups.deleteBackup, .with { $0.id = backup.id })
                        }
                        #expect(deleteBackup?.message == "backup \(backup.id) is in use by restore job \(intoOther.id) of "
                                + "\(TestServer.namespace)/shop-acceptance; wait for it to end or cancel it")
                        let deleteSource = await expectStatus(.failedPrecondition) {
                            _ = try await server.withClient(token: server.platformToken) { platform in
                                try await platform.unary(Backups.deleteEnvironment, .with {
                                    $0.namespace = TestServer.namespace; $0.name = "shop-production"; $0.force = true
                                })
                            }
                        }
                        #expect(deleteSource?.message.contains("is in use by restore job \(intoOther.id)") == true)

                        unlink(otherGate)
                        let second = try await waitForJob(intoOther.id, on: client)
                        #expect(second.status == .finished, "\(second.error)")
                    }
                    let referenced = Set(try referencedKeys(source))
                    let restored = try folderFingerprint(other.fileStore)
                    #expect(Set(restored.keys.map { String($0.split(separator: "/").last!) }) == referenced)
                    #expect(UInt64(restored.count) == backup.fileCount)
                    // Once the restores ended, the backup can go.
                    try await server.withClient { client in
                        _ = try await client.unary(Backups.deleteBackup, .with { $0.id = backup.id })
                    }
                }
            }
        }
    }
}
