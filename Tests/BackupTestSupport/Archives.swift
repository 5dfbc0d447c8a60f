import Foundation

/// Makes an archive in `scratch` with Python's tarfile, as a hostile or
/// careless client might: `members` is a Python list of (name, kind,
/// content) with kind "file", "dir", "symlink", "hardlink", "chardev";
/// `mode` is "w:gz" or another tarfile mode. Returns its path.
public func craftArchive(in scratch: ScratchDirectory, _ members: String, mode: String = "w:gz") async throws -> String {
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
    let made = try await runCommand("/usr/bin/python3", ["-c", script, path])
    guard made.status == 0 else { throw TestSupportError("python could not make the archive: \(made.standardError)") }
    return path
}

/// A gzip tar of many regular files, written header by header rather than
/// through Python's `tarfile` (five times faster for half a million
/// members): `members` is a Python iterable of `(name, content)`, names of
/// at most 100 bytes, each content bytes or a count of zero bytes (written
/// a mebibyte at a time, so a member may be larger than memory). `level` is
/// gzip's: 0 stores the content as it is.
public func craftPlainArchive(in scratch: ScratchDirectory, _ members: String, level: Int = 1) async throws -> String {
    let path = scratch.path + "/crafted-\(UUID().uuidString.prefix(8)).tar.gz"
    let script = """
        import gzip, sys
        def header(name, size):
            h = bytearray(512)
            n = name.encode()
            assert len(n) <= 100
            h[0:len(n)] = n
            h[100:108] = b'0000644\\0'; h[108:116] = b'0000000\\0'; h[116:124] = b'0000000\\0'
            h[124:136] = b'%011o\\0' % size; h[136:148] = b'00000000000\\0'
            h[148:156] = b' ' * 8; h[156:157] = b'0'; h[257:263] = b'ustar\\0'; h[263:265] = b'00'
            h[148:156] = b'%06o\\0 ' % sum(h)
            return bytes(h)
        with gzip.open(sys.argv[1], 'wb', compresslevel=\(level)) as out:
            for name, data in \(members):
                size = data if isinstance(data, int) else len(data)
                out.write(header(name, size))
                if isinstance(data, int):
                    for start in range(0, size, 1 << 20):
                        out.write(bytes(min(1 << 20, size - start)))
                else:
                    out.write(data)
                out.write(b'\\0' * (-size % 512))
            out.write(b'\\0' * 1024)
        """
    let made = try await runCommand("/usr/bin/python3", ["-c", script, path])
    guard made.status == 0 else { throw TestSupportError("python could not make the archive: \(made.standardError)") }
    return path
}
