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
        TEMPLATE = bytearray(512)
        TEMPLATE[100:108] = b'0000644\\0'; TEMPLATE[108:116] = b'0000000\\0'; TEMPLATE[116:124] = b'0000000\\0'
        TEMPLATE[136:148] = b'00000000000\\0'; TEMPLATE[148:156] = b' ' * 8; TEMPLATE[156:157] = b'0'
        TEMPLATE[257:263] = b'ustar\\0'; TEMPLATE[263:265] = b'00'
        # The checksum is the sum of the header's bytes: the template's, plus each member's name and size.
        BASE = sum(TEMPLATE)
        def header(name, size):
            n = name.encode()
            assert len(n) <= 100
            field = b'%011o\\0' % size
            h = bytearray(TEMPLATE)
            h[0:len(n)] = n
            h[124:136] = field
            h[148:156] = b'%06o\\0 ' % (BASE + sum(n) + sum(field))
            return bytes(h)
        with gzip.open(sys.argv[1], 'wb', compresslevel=\(level)) as out:
            # Small members are gathered a mebibyte at a time: a write to gzip per header is most of the time otherwise.
            pending = bytearray()
            for name, data in \(members):
                size = data if isinstance(data, int) else len(data)
                pending += header(name, size)
                if isinstance(data, int):
                    out.write(pending); pending.clear()
                    for start in range(0, size, 1 << 20):
                        out.write(bytes(min(1 << 20, size - start)))
                else:
                    pending += data
                pending += bytes(-size % 512)
                if len(pending) >= 1 << 20:
                    out.write(pending); pending.clear()
            out.write(pending + bytes(1024))
        """
    let made = try await runCommand("/usr/bin/python3", ["-c", script, path])
    guard made.status == 0 else { throw TestSupportError("python could not make the archive: \(made.standardError)") }
    return path
}
