import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// The README's walk-through, through the real backupctl binary.
@Suite(.serialized) struct BackupctlTests {
    private func json(_ result: CommandResult) throws -> [String: Any] {
        #expect(result.status == 0, "\(result.standardError)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any])
    }

    /// Both binaries and ServerInfo name the version and the commit of this
    /// checkout they were built from (`make` writes it before building), so
    /// an operator can tell which build of several processes answered.
    @Test func versionNamesTheCommitBuilt() async throws {
        let head = try await runCommand("/usr/bin/git", ["-C", projectRoot, "rev-parse", "--short=12", "HEAD"])
        let commit = BuildInfo.commit
        // A build from a tree with uncommitted changes says so.
        let hash = commit.hasSuffix("-dirty") ? String(commit.dropLast("-dirty".count)) : commit
        #expect(hash.count == 12 && hash.allSatisfy(\.isHexDigit), "built without `make`: \(commit)")
        // The commit of a build is one of this repository's (HEAD when the tests were built by `make test`).
        let known = try await runCommand("/usr/bin/git", ["-C", projectRoot, "cat-file", "-t", hash])
        #expect(known.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "commit", "\(commit) vs HEAD \(head.standardOutput)")
        for binary in ["backupd", "backupctl"] {
            let printed = try await runCommand("\(binDirectory)/\(binary)", ["--version"])
            #expect(printed.status == 0 && printed.standardOutput == "\(binary) \(BuildInfo.version) (commit \(commit))\n",
                    "\(printed.standardOutput)\(printed.standardError)")
        }
        try await withInProcessServer { server in
            let info = try await server.withClient { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
            #expect(info.version == BuildInfo.description)
        }
    }

    @Test func walkThrough() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let registered = try json(try await server.backupctl([
                    "env", "register", "acme/shop-production", "--app", "shop", "--database-url", app.connectionString,
                    "--file-store", app.fileStore, "--package-version", "2.4.1", "--json",
                ], token: server.platformToken))
                #expect(registered["state"] as? String == "ENVIRONMENT_STATE_RUNNING")

                let info = try await server.backupctl(["info"])
                #expect(info.status == 0 && info.standardOutput.contains("test-admin (admin in acme)"))

                let created = try json(try await server.backupctl(["create", "--env", "acme/shop-production", "--comment", "via cli", "--wait", "--json"]))
                #expect(created["status"] as? String == "BACKUP_STATUS_FINISHED")
                #expect(created["file_count"] as? Int == 302)
                #expect(created["package_version"] as? String == "2.4.1")
                let id = try #require(created["id"] as? String)

                let listed = try json(try await server.backupctl(["list", "--env", "acme/shop-production", "--json"]))
                #expect((listed["backups"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == [id])
                let table = try await server.backupctl(["list", "--env", "acme/shop-production"])
                #expect(table.standardOutput.contains(id) && table.standardOutput.contains("finished"))

                let commented = try json(try await server.backupctl(["comment", id, "before the migration", "--json"]))
                #expect(commented["comment"] as? String == "before the migration")
                let shown = try await server.backupctl(["show", id])
                #expect(shown.standardOutput.contains("before the migration") && shown.standardOutput.contains("302"))

                let job = try json(try await server.backupctl(["job", try #require(created["job_id"] as? String), "--json"]))
                #expect(job["status"] as? String == "JOB_STATUS_FINISHED")

                let stopped = try json(try await server.backupctl(["env", "stop", "acme/shop-production", "--json"]))
                #expect(stopped["state"] as? String == "ENVIRONMENT_STATE_STOPPED")

                #expect(try await server.backupctl(["delete", id]).status == 0)
                let gone = try await server.backupctl(["show", id])
                #expect(gone.status == 1)
                #expect(gone.standardError.contains("NOT_FOUND") && gone.standardError.contains(id))

                let activity = try await server.backupctl(["activity", "--env", "acme/shop-production"])
                for action in ["backup", "comment", "stop", "delete"] {
                    #expect(activity.standardOutput.contains(action))
                }
            }
        }
    }

    @Test func anUploadIsGivenUpThroughTheCLI() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                let upload = try await server.withClient { try await startUpload($0, Array("given up".utf8)) }
                let abandoned = try await server.backupctl(["upload", "abandon", upload.id])
                #expect(abandoned.status == 0 && abandoned.standardOutput.contains("upload \(upload.id): abandoned"), "\(abandoned)")
                let json = try json(try await server.backupctl(["upload", "abandon", upload.id, "--json"]))
                #expect(json["state"] as? String == "UPLOAD_STATE_ABANDONED")
            }
        }
    }

    @Test func tokensThroughTheCLI() async throws {
        try await withInProcessServer(live: true) { server in
            let created = try json(try await server.backupctl(["token", "create", "--namespace", "acme", "--role", "viewer", "--name", "dashboard", "--json"]))
            let secret = try #require(created["secret"] as? String)
            let asViewer = try await server.backupctl(["create", "--env", "acme/shop-production"], token: secret)
            #expect(asViewer.status == 1 && asViewer.standardError.contains("PERMISSION_DENIED"))
            let listed = try await server.backupctl(["token", "list"])
            #expect(listed.standardOutput.contains("dashboard") && listed.standardOutput.contains("viewer"))
            let noToken = try await runCommand("\(binDirectory)/backupctl", ["info"], environment: [
                "BACKUPCTL_ADDR": server.address, "BACKUPCTL_TOKEN": "", "BACKUPCTL_CA": TestServer.caFile,
            ])
            #expect(noToken.status != 0 && noToken.standardError.contains("token"))
        }
    }
}
