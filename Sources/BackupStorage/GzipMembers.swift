import BackupRules
import CZlib

/// Compresses a byte stream into one gzip file made of independent members,
/// a 1 MiB block each, several blocks at once on all cores. RFC 1952 lets
/// members follow one another, and gzip, tar, libarchive and Python read
/// them as one stream, so an archive is made in a fraction of one core's
/// time. A block whose samples do not shrink (a PDF, an image) is stored
/// rather than compressed: deflating it again costs time and saves nothing.
final class GzipMembers {
    static let blockSize = 1 << 20
    private let level: Int32
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private let batch = 8
    private var blocks: [[UInt8]] = []
    private var current: [UInt8] = []
    /// Why the last `write` from a C callback failed, for its caller to throw.
    var failure: (any Error)?

    /// `sink` receives the compressed stream in order.
    init(level: Int, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.level = Int32(level)
        self.sink = sink
        current.reserveCapacity(Self.blockSize)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let taken = rest.prefix(Self.blockSize - current.count)
            current.append(contentsOf: taken)
            rest = rest.dropFirst(taken.count)
            if current.count == Self.blockSize {
                blocks.append(current)
                current.removeAll(keepingCapacity: true)
                if blocks.count == batch { try flush() }
            }
        }
    }

    /// Compresses and passes on what is left; the stream is then complete.
    func finish() throws {
        if !current.isEmpty { blocks.append(current) }
        current = []
        try flush()
    }

    private func flush() throws {
        let level = self.level
        let pending = blocks
        let members = try concurrentMap(pending.count) { index in
            try Self.member(pending[index], level: Self.shrinks(pending[index]) ? level : 0)
        }
        blocks.removeAll(keepingCapacity: true)
        for member in members { try member.withUnsafeBytes { try sink($0) } }
    }

    /// Whether four 16 KiB samples spread over the block deflate (fast) to less than 90 %.
    private static func shrinks(_ block: [UInt8]) -> Bool {
        let sample = 16 << 10
        guard block.count > 4 * sample else { return true }
        var (taken, produced) = (0, 0)
        for index in 0..<4 {
            let start = (block.count - sample) * index / 3
            produced += (try? deflated(block[start..<(start + sample)], level: 1, windowBits: -15).count) ?? sample
            taken += sample
        }
        return produced * 10 < taken * 9
    }

    /// One gzip member (windowBits 31: a gzip header and trailer) holding `block`.
    private static func member(_ block: [UInt8], level: Int32) throws -> [UInt8] {
        try deflated(block[...], level: level, windowBits: 31)
    }

    private static func deflated(_ input: ArraySlice<UInt8>, level: Int32, windowBits: Int32) throws -> [UInt8] {
        var stream = z_stream()
        guard deflateInit2_(&stream, level, Z_DEFLATED, windowBits, 8, Z_DEFAULT_STRATEGY, zlibVersion(),
                            Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw ArchiveError.write("zlib could not start a gzip member")
        }
        defer { deflateEnd(&stream) }
        var output = [UInt8](repeating: 0, count: Int(deflateBound(&stream, UInt(input.count))))
        let status = input.withUnsafeBytes { source in
            output.withUnsafeMutableBytes { target in
                stream.next_in = UnsafeMutablePointer(mutating: source.baseAddress?.assumingMemoryBound(to: Bytef.self))
                stream.avail_in = uInt(source.count)
                stream.next_out = target.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(target.count)
                return deflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END else { throw ArchiveError.write("zlib could not finish a gzip member (status \(status))") }
        output.removeSubrange(Int(stream.total_out)...)
        return output
    }
}
