import Foundation
import Glibc
import VouchSupport

/// Boot snapshots kept across runs (`vouch run --snapshot-after-boot`).
///
/// An entry is found by its key: every fact a restored guest depends on
/// (see `Snapshotting.snapshotKey`). The cache knows nothing of what a
/// backend saves: its manifest records every file of the entry with its
/// size (and a checksum for files up to 64 MiB), and checks them all. The directory name is a hash of
/// the key, and the full key is stored and compared, so a hash collision or
/// a changed image can never select a wrong snapshot. Entries are written in
/// a temporary directory and renamed into place, so a crash leaves no half
/// entry that looks complete; each is checked before use.
public struct SnapshotCache: Sendable {
    /// The directory holding the entries (created 0700).
    public let root: String

    /// `$VOUCH_SNAPSHOTS`, else `$XDG_CACHE_HOME/vouch/snapshots`, else
    /// `~/.cache/vouch/snapshots`.
    public static var defaultRoot: String {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["VOUCH_SNAPSHOTS"], !dir.isEmpty { return dir }
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache").path
        return base + "/vouch/snapshots"
    }

    /// A cache in `root` (default: `defaultRoot`).
    public init(root: String? = nil) {
        self.root = root ?? Self.defaultRoot
    }

    /// What a lookup found.
    package enum Lookup: Sendable {
        /// A complete, checked entry.
        case hit(String)
        /// Nothing usable; the reason is for the log.
        case miss(String)
    }

    /// What is written next to the saved guest.
    struct Manifest: Codable {
        struct File: Codable, Equatable {
            var bytes: Int
            /// For files up to `checksumLimit` bytes.
            var checksum: String?
        }
        var machine: String
        var key: String
        var files: [String: File]
        var created: Date
        static let file = "manifest.json"
        static let checksumLimit = 64 << 20
    }

    /// The entry for `key`, checked; a damaged entry is removed so the next
    /// boot can store a good one.
    package func lookup(key: String, machine: String) -> Lookup {
        let directory = entryDirectory(key)
        guard FileManager.default.fileExists(atPath: directory) else {
            return .miss(staleReason(key: key, machine: machine) ?? "no boot snapshot cached for this configuration yet")
        }
        if let problem = check(directory, key: key) {
            try? FileManager.default.removeItem(atPath: directory)
            return .miss("the cached boot snapshot \(directory) is unusable (\(problem)); removed it")
        }
        return .hit(directory)
    }

    /// Removes an entry that failed to restore.
    package func discard(_ directory: String) {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Saves a new entry: `save` fills a private temporary directory, which
    /// then becomes the entry in one rename. Returns the entry's directory.
    package func store(key: String, machine: String, save: @Sendable (String) async throws(VouchError) -> Void) async throws(VouchError) -> String {
        try vouching("cannot create the snapshot cache \(root)") {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        removeAbandonedStores()
        let temporary = try makePrivateDirectory(in: root, prefix: ".incomplete-")
        do throws(VouchError) {
            try await save(temporary)
            let manifest = Manifest(machine: machine, key: key, files: try Self.describeFiles(in: temporary), created: Date())
            try vouching("cannot write the snapshot manifest") {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try encoder.encode(manifest).write(to: URL(fileURLWithPath: temporary + "/" + Manifest.file))
            }
            let final = entryDirectory(key)
            if rename(temporary, final) != 0 {
                // Another run stored the same entry first: theirs is as good.
                try? FileManager.default.removeItem(atPath: temporary)
            }
            return final
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }

    /// Size (and small files' checksum) of every regular file in `directory`.
    static func describeFiles(in directory: String) throws(VouchError) -> [String: Manifest.File] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var files: [String: Manifest.File] = [:]
        for name in names where name != Manifest.file {
            let path = directory + "/" + name
            guard let bytes = size(path) else { continue }
            files[name] = Manifest.File(bytes: bytes, checksum: bytes <= Manifest.checksumLimit ? try checksum(path) : nil)
        }
        return files
    }

    // MARK: - Internals

    /// Temporary directories of stores that crashed (older than an hour:
    /// younger ones may belong to a run still saving).
    private func removeAbandonedStores() {
        let fm = FileManager.default
        for entry in (try? fm.contentsOfDirectory(atPath: root)) ?? [] where entry.hasPrefix(".incomplete-") {
            let path = root + "/" + entry
            if let modified = (try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date,
               Date().timeIntervalSince(modified) > 3600 {
                try? fm.removeItem(atPath: path)
            }
        }
    }

    package func entryDirectory(_ key: String) -> String {
        root + "/" + Self.hash(key)
    }

    /// Why `directory` must not be used, or nil if it is complete and intact.
    private func check(_ directory: String, key: String) -> String? {
        guard let data = FileManager.default.contents(atPath: directory + "/" + Manifest.file),
              let manifest = try? JSONDecoder().decode(Manifest.self, from: data) else {
            return "no readable \(Manifest.file)"
        }
        guard manifest.key == key else { return "it was made for a different configuration" }
        guard !manifest.files.isEmpty else { return "the manifest lists no files" }
        for (name, expected) in manifest.files.sorted(by: { $0.key < $1.key }) {
            let path = directory + "/" + name
            guard let bytes = Self.size(path) else { return "\(name) is missing" }
            guard bytes == expected.bytes else { return "\(name) has \(bytes) bytes, expected \(expected.bytes)" }
            if let sum = expected.checksum, (try? Self.checksum(path)) != sum { return "\(name)'s checksum does not match" }
        }
        return nil
    }

    /// If entries exist for `machine` under other keys, says what changed.
    private func staleReason(key: String, machine: String) -> String? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let wanted = key.split(separator: "\n")
        for entry in entries where !entry.hasPrefix(".") {
            guard let data = FileManager.default.contents(atPath: root + "/" + entry + "/" + Manifest.file),
                  let manifest = try? JSONDecoder().decode(Manifest.self, from: data), manifest.machine == machine else { continue }
            let had = manifest.key.split(separator: "\n")
            let change = zip(had, wanted).first { $0 != $1 }.map { "'\($0.0)' is now '\($0.1)'" }
                ?? "the configuration has \(wanted.count) facts, the snapshot \(had.count)"
            return "the cached boot snapshot \(entry) is stale (\(change)); not using it"
        }
        return nil
    }

    static func size(_ path: String) -> Int? {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : nil
    }

    /// 64-bit FNV-1a of a file: catches truncation and damage, not tampering
    /// (the cache is private to its owner).
    static func checksum(_ path: String) throws(VouchError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw VouchError(.other, "cannot read \(path)", cause: SystemCallError("open \(path)"))
        }
        defer { try? handle.close() }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        while let chunk = try vouching("cannot read \(path)", { try handle.read(upToCount: 1 << 20) }), !chunk.isEmpty {
            chunk.withUnsafeBytes { bytes in
                for byte in bytes {
                    hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
                }
            }
        }
        return String(hash, radix: 16)
    }

    /// A name for the entry directory: two FNV-1a hashes with different seeds.
    static func hash(_ key: String) -> String {
        func fnv(_ seed: UInt64) -> UInt64 {
            var hash = seed
            for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
            return hash
        }
        let a = String(fnv(0xcbf2_9ce4_8422_2325), radix: 16)
        let b = String(fnv(0x8422_2325_cbf2_9ce4), radix: 16)
        return String(repeating: "0", count: 16 - a.count) + a + String(repeating: "0", count: 16 - b.count) + b
    }
}

/// A new directory only the owner can enter, inside `parent`.
/// - Throws: `.other` with the failing `mkdtemp` as the cause.
package func makePrivateDirectory(in parent: String, prefix: String = "snap-") throws(VouchError) -> String {
    var template = Array("\(parent)/\(prefix)XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw VouchError(.other, "cannot create a directory in \(parent)", cause: SystemCallError("mkdtemp \(parent)/\(prefix)XXXXXX"))
    }
    return String(cString: made)
}

/// Facts about the host that go into snapshot keys.
enum SnapshotFacts {
    /// A file's path, size, modification time and inode: a rebuilt image
    /// is a different file, so a snapshot of the old one is not reused.
    static func identity(of file: String) -> String {
        var st = stat()
        guard stat(file, &st) == 0 else { return "\(file) missing" }
        return "\(file) size=\(st.st_size) mtime=\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) inode=\(st.st_ino)"
    }
}
