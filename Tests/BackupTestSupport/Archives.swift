import Foundation

/// Makes an archive in `scratch` with Python's tarfile, as a hostile or
/// careless client might: `members` is a Python list of (name, kind,
/// content) with kind "file", "dir", "symlink", "hardlink", "chardev";
/// `mode` is "w:gz" or another tarfile mode. Returns its path.
public func craftArchive(in scratch: ScratchDirectory, _ members: String, mode: String = "w:gz") throws -> String {
    let path = scratch.path + "/crafted-\(UUID().uuidString.prefix(8)).tar.gz"
    let script = """
        import io, sys, tarfile
        with tarfile.open(sys.argv[1], '\(mode)') as t:
            for name, kind, content in \(members):
                info = tarfile.TarInfo(name)
                data = content.encode() if isinstance(content, str) else content
                if kind == 'file':
                    info.size = len(data); t.addfile(info, io.BytesIO(data))
                else:
                    info.type = {'dir': tarfile.DIRTYPE, 'symlink': tarfile.SYMTYPE, 'hardlink': tarfile.LNKTYPE,
                                 'chardev': tarfile.CHRTYPE}[kind]
                    info.linkname = content if kind in ('symlink', 'hardlink') else ''
                    t.addfile(info)
        """
    let made = try runCommand("/usr/bin/python3", ["-c", script, path])
    guard made.status == 0 else { throw TestSupportError("python could not make the archive: \(made.standardError)") }
    return path
}
