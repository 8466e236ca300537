import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The boot snapshot cache on plain files: keys, checks, atomic stores.
@Suite struct SnapshotCacheTests {
    let root = NSTemporaryDirectory() + "vouch-cache-test-\(UUID().uuidString.prefix(8))"

    func store(_ cache: SnapshotCache, key: String, machine: String = "m", state: String = "device state", ramBytes: Int = 4096) async throws -> String {
        try await cache.store(key: key, machine: machine) { dir throws(VouchError) in
            try vouching("cannot write the entry") {
                try Data(state.utf8).write(to: URL(fileURLWithPath: dir + "/state"))
                _ = FileManager.default.createFile(atPath: dir + "/ram", contents: nil)
                truncate(dir + "/ram", off_t(ramBytes))
                try Data("[]".utf8).write(to: URL(fileURLWithPath: dir + "/9p-mounts.json"))
            }
        }
    }

    @Test func storedEntryIsFoundOnlyForItsExactKeyAndIsPrivate() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = SnapshotCache(root: root)
        let key = "format 1\narg -m\narg 512"
        if case .hit = cache.lookup(key: key, machine: "m") { Issue.record("hit in an empty cache") }
        let entry = try await store(cache, key: key)
        guard case .hit(let found) = cache.lookup(key: key, machine: "m") else { Issue.record("miss after store"); return }
        #expect(found == entry)
        let attributes = try FileManager.default.attributesOfItem(atPath: entry)
        #expect((attributes[.posixPermissions] as? Int) == 0o700)
        // No temporary directory is left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == [(entry as NSString).lastPathComponent])

        guard case .miss(let reason) = cache.lookup(key: "format 1\narg -m\narg 1024", machine: "m") else {
            Issue.record("a different key must not hit"); return
        }
        #expect(reason.contains("is stale ('arg 512' is now 'arg 1024')"), "\(reason)")
        guard case .miss(let other) = cache.lookup(key: "format 1\narg -m\narg 1024", machine: "n") else { return }
        #expect(other == "no boot snapshot cached for this configuration yet")
    }

    @Test func damagedEntriesAreReportedAndRemoved() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = SnapshotCache(root: root)
        let cases: [(String, (String) throws -> Void)] = [
            ("state's checksum does not match", { try Data("device stat3".utf8).write(to: URL(fileURLWithPath: $0 + "/state")) }),
            ("state has 3 bytes, expected 12", { try Data("dev".utf8).write(to: URL(fileURLWithPath: $0 + "/state")) }),
            ("state is missing", { try FileManager.default.removeItem(atPath: $0 + "/state") }),
            ("ram has 100 bytes, expected 4096", { _ = truncate($0 + "/ram", 100) }),
            ("no readable manifest.json", { try Data("{".utf8).write(to: URL(fileURLWithPath: $0 + "/manifest.json")) }),
        ]
        for (i, (expected, damage)) in cases.enumerated() {
            let key = "key \(i)"
            let entry = try await store(cache, key: key)
            try damage(entry)
            guard case .miss(let reason) = cache.lookup(key: key, machine: "m") else { Issue.record("\(expected): damaged entry used"); continue }
            #expect(reason.contains(expected), "\(reason)")
            #expect(!FileManager.default.fileExists(atPath: entry))
        }
    }

    @Test func abandonedStoresAreClearedButRecentOnesKept() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cache = SnapshotCache(root: root)
        for name in [".incomplete-old", ".incomplete-young"] {
            try FileManager.default.createDirectory(atPath: root + "/" + name, withIntermediateDirectories: true)
        }
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -7200)], ofItemAtPath: root + "/.incomplete-old")
        _ = try await store(cache, key: "k")
        #expect(!FileManager.default.fileExists(atPath: root + "/.incomplete-old"))
        #expect(FileManager.default.fileExists(atPath: root + "/.incomplete-young"))
    }

    @Test func hashIsStableAndKeySensitive() {
        #expect(SnapshotCache.hash("a") == SnapshotCache.hash("a"))
        #expect(SnapshotCache.hash("a") != SnapshotCache.hash("b"))
        #expect(SnapshotCache.hash("a").count == 32)
    }

    @Test func qemuCommandLineMapsSnapshotRAMPrivatelyAndWaitsForIncomingState() {
        var config = QEMUConfig(boot: .direct(kernel: "/k", initrd: nil, rootDisk: nil, cmdline: "console=ttyS0"))
        config.memoryMiB = 256
        var line = QEMUCommandLine(config: config, stateDirectory: "/s", sharedDirectory: "/x", accelerator: .tcg, overlay: nil)
        #expect(!line.arguments(hostnameParameter: "h", hostname: "m").contains("-incoming"))
        line.memory = .privateFile("/snap,1/ram")
        line.incoming = true
        let args = line.arguments(hostnameParameter: "h", hostname: "m")
        #expect(args.contains("microvm,x-option-roms=off,rtc=on,memory-backend=ram"))
        #expect(args.contains("memory-backend-file,id=ram,size=256M,share=off,mem-path=/snap,,1/ram"))
        #expect(args.joined(separator: " ").contains("-incoming defer -S"))
        line.memory = .memfd
        #expect(line.arguments(hostnameParameter: "h", hostname: "m").contains("memory-backend-memfd,id=ram,size=256M,share=on"))
    }

    @Test func specSettingTurnsBootSnapshotsOn() throws {
        let spec = try TestSpec.parse(try JSONValue.parse(Array(#"{"snapshotAfterBoot": true, "machines": {"a": {}}}"#.utf8)))
        #expect(spec.snapshotAfterBoot)
        #expect(throws: VouchError.self) {
            try TestSpec.parse(try JSONValue.parse(Array(#"{"snapshotAfterBoot": 1, "machines": {"a": {}}}"#.utf8)))
        }
    }
}

/// Snapshot API behaviour that does not need a real guest.
@Suite struct MachineSnapshotTests {
    @Test func backendsWithoutSnapshotsSayUnsupportedAndKeepWorking() async throws {
        try await withFakeMachine { fake in
            let m = fake.machine
            let error = await #expect(throws: VouchError.self) { try await m.snapshot("s") }
            #expect(error?.kind == .unsupported, "\(String(describing: error))")
            #expect(error?.message == "snapshot is not supported by the pty-fake backend")
            let still = try await m.succeed("echo still-here")
            #expect(still == "still-here\n")
        }
    }

    @Test func snapshotNamesAreCheckedAndMissingOnesAreClearErrors() async throws {
        try await withFakeMachine { fake in
            let m = fake.machine
            for bad in ["", "../x", ".hidden", "a b"] {
                do {
                    try await m.restore(bad)
                    Issue.record("restore('\(bad)') succeeded")
                } catch let error as VouchError {
                    #expect(error.message.contains("invalid snapshot name"), "\(bad): \(error)")
                }
            }
            do {
                try await m.restore("never-taken")
                Issue.record("restore of a missing snapshot succeeded")
            } catch let error as VouchError {
                #expect(error.message == "there is no snapshot named 'never-taken'", "\(error)")
            }
        }
    }
}
