import BackupRules
@testable import BackupStorage
import BackupTestSupport
import Foundation
import Testing

/// A restore's folder swap on temporary folders: what each step leaves
/// where, that only what carries backupd's markers is replaced or removed,
/// and that a failed swap puts back what it moved.
@Suite struct RestoreFoldersTests {
    /// A scratch folder holding `files` (its store) and the folders of a restore of it.
    private func withFolders(_ body: (RestoreFolders, ScratchDirectory) throws -> Void) throws {
        let scratch = try ScratchDirectory("restore-folders")
        defer { scratch.remove() }
        let store = scratch.path + "/files"
        try body(RestoreFolders(fileStore: store, staging: store + ".restore-1", previous: store + ".prerestore",
                                superseded: store + ".restore-1-old", jobID: "job-1"), scratch)
    }

    /// What is in a folder: its names, sorted; nil when it is not there.
    private func names(_ folder: String) -> [String]? {
        (try? FileManager.default.contentsOfDirectory(atPath: folder))?.sorted()
    }

    private func make(_ folder: String, holding names: [String]) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for name in names { try Data(name.utf8).write(to: URL(fileURLWithPath: folder + "/" + name)) }
    }

    @Test func stagingIsMadeMarkedAndAnEarlierAttemptsIsReplaced() throws {
        try withFolders { folders, _ in
            try make(folders.fileStore, holding: ["own.txt"])
            _ = try folders.makeStaging()
            #expect(names(folders.staging) == [folders.jobMarker])
            // The same job again (it was interrupted): its leftover goes, a fresh staging folder comes.
            try Data("half".utf8).write(to: URL(fileURLWithPath: folders.staging + "/half-written"))
            _ = try folders.makeStaging()
            #expect(names(folders.staging) == [folders.jobMarker])
        }
    }

    @Test func aStagingFolderSomeoneElseMadeIsRefusedAndKept() throws {
        try withFolders { folders, _ in
            try make(folders.staging, holding: ["theirs.txt"])
            #expect(throws: RestoreFolderError.self) { _ = try folders.makeStaging() }
            #expect(names(folders.staging) == ["theirs.txt"])
        }
    }

    @Test func theSwapMovesTheStoreAsideAndAnOlderCopyFurther() throws {
        try withFolders { folders, _ in
            try make(folders.fileStore, holding: ["own.txt"])
            try make(folders.previous, holding: ["older.txt", RestoreFolders.previousMarker])
            _ = try folders.makeStaging()
            try Data("restored".utf8).write(to: URL(fileURLWithPath: folders.staging + "/restored.txt"))
            try folders.swap()
            #expect(names(folders.fileStore) == [folders.jobMarker, "restored.txt"].sorted())
            #expect(names(folders.previous) == [RestoreFolders.previousMarker, "own.txt"].sorted())
            #expect(names(folders.superseded) == [RestoreFolders.previousMarker, "older.txt"].sorted())
            #expect(names(folders.staging) == nil)
            #expect(folders.restoredFilesInStore)
            // Recovery's undo puts every folder back.
            folders.unswap()
            #expect(names(folders.fileStore) == ["own.txt"])
            #expect(names(folders.previous) == [RestoreFolders.previousMarker, "older.txt"].sorted())
            #expect(names(folders.staging) == [folders.jobMarker, "restored.txt"].sorted())
            #expect(!folders.restoredFilesInStore)
        }
    }

    @Test func aPreviousCopyBackupdDidNotMakeStopsTheSwapBeforeAnythingMoves() throws {
        try withFolders { folders, _ in
            try make(folders.fileStore, holding: ["own.txt"])
            try make(folders.previous, holding: ["someone's.txt"])
            _ = try folders.makeStaging()
            #expect(throws: RestoreFolderError.self) { try folders.swap() }
            #expect(names(folders.fileStore) == ["own.txt"])
            #expect(names(folders.previous) == ["someone's.txt"])
            #expect(names(folders.staging) == [folders.jobMarker])
        }
    }

    @Test func aSwapWhoseLastRenameFailsPutsBackWhatItMoved() throws {
        try withFolders { folders, _ in
            try make(folders.fileStore, holding: ["own.txt"])
            try make(folders.previous, holding: ["older.txt", RestoreFolders.previousMarker])
            // No staging folder: the last rename fails.
            #expect(throws: RestoreFolderError.self) { try folders.swap() }
            #expect(names(folders.fileStore) == ["own.txt"])
            #expect(names(folders.previous) == [RestoreFolders.previousMarker, "older.txt"].sorted())
            #expect(names(folders.superseded) == nil)
        }
    }

    @Test func onlyAFolderCarryingTheMarkerIsRemoved() throws {
        try withFolders { folders, scratch in
            #expect(try RestoreFolders.remove(folders.superseded, carrying: RestoreFolders.previousMarker) == .absent)
            try make(folders.superseded, holding: ["old.txt"])
            #expect(try RestoreFolders.remove(folders.superseded, carrying: RestoreFolders.previousMarker) == .notOurs)
            #expect(names(folders.superseded) == ["old.txt"])
            // A link to a marked folder is not that folder.
            try make(scratch.path + "/elsewhere", holding: [RestoreFolders.previousMarker])
            try FileManager.default.createSymbolicLink(atPath: folders.previous, withDestinationPath: scratch.path + "/elsewhere")
            #expect(try RestoreFolders.remove(folders.previous, carrying: RestoreFolders.previousMarker) == .notOurs)
            #expect(names(scratch.path + "/elsewhere") == [RestoreFolders.previousMarker])
            try Data().write(to: URL(fileURLWithPath: folders.superseded + "/" + RestoreFolders.previousMarker))
            #expect(try RestoreFolders.remove(folders.superseded, carrying: RestoreFolders.previousMarker) == .removed)
            #expect(names(folders.superseded) == nil)
        }
    }

    /// Helper finding: the tenant owns the folder its store is in, so it can
    /// rename the staging folder away while a restore writes it and put a
    /// link in its place; files were then written wherever the link led (the
    /// blob store). Files go in relative to the staging folder held open, so
    /// they land in the folder the restore made, wherever it was moved, and
    /// the swap refuses what now stands at the staging name.
    @Test func aStagingFolderSwappedForALinkMidwayReceivesEveryFileAndIsNotSwappedIn() throws {
        try withFolders { folders, scratch in
            try make(folders.fileStore, holding: ["own.txt"])
            try make(scratch.path + "/elsewhere", holding: [])
            let (staging, _) = try folders.makeStaging()
            try FileManager.default.moveItem(atPath: folders.staging, toPath: scratch.path + "/moved")
            try FileManager.default.createSymbolicLink(atPath: folders.staging, withDestinationPath: scratch.path + "/elsewhere")
            let file = try staging.createFile("ab/cd/restored.txt")
            try Array("restored".utf8).withUnsafeBytes { try file.write($0) }
            #expect(names(scratch.path + "/elsewhere") == [])
            #expect(names(scratch.path + "/moved/ab/cd") == ["restored.txt"])
            #expect(throws: RestoreFolderError.self) { try folders.swap() }
            #expect(names(folders.fileStore) == ["own.txt"])
            #expect(names(folders.previous) == nil)
        }
    }

    @Test func aLinkInsideTheStagingFolderIsNeitherFollowedNorHandedOver() throws {
        try withFolders { folders, scratch in
            try make(scratch.path + "/elsewhere", holding: ["theirs.txt"])
            let (staging, owner) = try folders.makeStaging()
            try FileManager.default.createSymbolicLink(atPath: folders.staging + "/ab", withDestinationPath: scratch.path + "/elsewhere")
            #expect(throws: BlobStoreError.self) { _ = try staging.createFile("ab/cd/restored.txt") }
            #expect(names(scratch.path + "/elsewhere") == ["theirs.txt"])
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: scratch.path + "/elsewhere")
            try staging.applyOwnership(folders: FileOwner(uid: owner.uid, gid: owner.gid, mode: 0o755), files: owner.forFiles)
            let mode = try FileManager.default.attributesOfItem(atPath: scratch.path + "/elsewhere")[.posixPermissions] as? Int
            #expect(mode == 0o700, "the link's target was handed over")
        }
    }

    /// Helper finding: every rename went by path, so a tenant that could
    /// write above its store's folder swapped that folder for a link to
    /// another tenant's, after the placement check: the restore put its
    /// files in the other store and deleted that store's previous copy.
    /// The folder holding the store is now reached from `/` without
    /// following a link, for every step.
    @Test func aFolderAboveTheStoreSwappedForALinkLeadsNowhere() throws {
        let scratch = try ScratchDirectory("restore-ancestor")
        defer { scratch.remove() }
        let (evil, victim) = (scratch.path + "/evil", scratch.path + "/victim")
        let store = evil + "/data/files"
        let folders = RestoreFolders(fileStore: store, staging: store + ".restore-1", previous: store + ".prerestore",
                                     superseded: store + ".restore-1-old", jobID: "job-1")
        try make(store, holding: ["evil.txt"])
        try make(victim + "/data/files", holding: ["victim.txt"])
        try make(victim + "/data/files.prerestore", holding: ["older.txt", RestoreFolders.previousMarker])
        try make(victim + "/data/files.restore-1-old", holding: ["oldest.txt", RestoreFolders.previousMarker])
        _ = try folders.makeStaging()
        try FileManager.default.moveItem(atPath: evil + "/data", toPath: evil + "/data.real")
        try FileManager.default.createSymbolicLink(atPath: evil + "/data", withDestinationPath: "../victim/data")

        #expect(throws: BlobStoreError.self) { try folders.swap() }
        folders.unswap()
        folders.removeJobMarker()
        #expect(!folders.restoredFilesInStore)
        #expect(throws: BlobStoreError.self) { _ = try folders.makeStaging() }
        for folder in [folders.previous, folders.superseded, folders.staging] {
            #expect(try RestoreFolders.remove(folder, carrying: RestoreFolders.previousMarker) == .notOurs)
        }
        #expect(names(victim + "/data/files") == ["victim.txt"])
        #expect(names(victim + "/data/files.prerestore") == ["older.txt", RestoreFolders.previousMarker].sorted())
        #expect(names(victim + "/data/files.restore-1-old") == ["oldest.txt", RestoreFolders.previousMarker].sorted())
        #expect(names(victim + "/data")?.count == 3)
        #expect(names(evil + "/data.real/files") == ["evil.txt"])
    }

    /// Helper finding: a process killed between the swap's renames (or those
    /// of its undoing) left the store missing, and recovery put nothing back
    /// because the store did not carry the job's marker. Putting back now
    /// finishes from any point, and changes nothing where nothing moved.
    @Test(arguments: ["nothing moved", "previous aside", "store aside", "restored files out again"])
    func puttingBackFinishesFromWhereverTheSwapWasCut(_ cut: String) throws {
        try withFolders { folders, _ in
            try make(folders.fileStore, holding: ["own.txt"])
            try make(folders.previous, holding: ["older.txt", RestoreFolders.previousMarker])
            _ = try folders.makeStaging()
            let fm = FileManager.default
            switch cut {
            case "nothing moved":
                break
            case "previous aside":
                try fm.moveItem(atPath: folders.previous, toPath: folders.superseded)
            case "store aside":
                try fm.moveItem(atPath: folders.previous, toPath: folders.superseded)
                try fm.moveItem(atPath: folders.fileStore, toPath: folders.previous)
                try Data().write(to: URL(fileURLWithPath: folders.previous + "/" + RestoreFolders.previousMarker))
            default:
                try folders.swap()
                try fm.moveItem(atPath: folders.fileStore, toPath: folders.staging)
            }
            folders.unswap()
            #expect(names(folders.fileStore) == ["own.txt"], "\(cut)")
            #expect(names(folders.previous) == ["older.txt", RestoreFolders.previousMarker].sorted(), "\(cut)")
            #expect(names(folders.staging) == [folders.jobMarker], "\(cut)")
            #expect(names(folders.superseded) == nil, "\(cut)")
        }
    }

}
