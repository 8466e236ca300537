import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// `vouch run --snapshot-after-boot` across runs: reuse, stale keys, damaged
/// and unloadable snapshots.
@Suite(.serialized)
final class BootSnapshotTests {
    let dir: URL
    let cache: URL

    init() throws {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-bootsnap-\(UUID().uuidString.prefix(8))")
        cache = dir.appendingPathComponent("cache")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: dir)
    }

    func spec(minimalMemory: Int = 512) throws -> String {
        let json = """
            {"machines": {"a": {"image": "minimal", "memory": \(minimalMemory)},
                          "s": {"image": "systemd"}}}
            """
        let url = dir.appendingPathComponent("spec-\(minimalMemory).json")
        try json.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func run(_ spec: String) async throws -> (status: Int32, output: String) {
        var env = ProcessInfo.processInfo.environment
        env["VOUCH_SNAPSHOTS"] = cache.path
        return try await runCLI(["run", spec, "--snapshot-after-boot", "-o", dir.appendingPathComponent("out").path], environment: env)
    }

    /// The cache entry of machine `name` with `memory` MiB (after the stale
    /// run, machine `a` has one entry per memory size).
    func entry(_ name: String, memory: Int = 512) throws -> String {
        for e in try FileManager.default.contentsOfDirectory(atPath: cache.path) where !e.hasPrefix(".") {
            let data = try Data(contentsOf: cache.appendingPathComponent(e + "/manifest.json"))
            let manifest = try JSONDecoder().decode(SnapshotCache.Manifest.self, from: data)
            if manifest.machine == name, manifest.key.contains("arg \(memory)") { return cache.path + "/" + e }
        }
        throw VouchError(.other, "no cache entry for \(name) with \(memory) MiB")
    }

    @Test func secondRunRestoresInsteadOfBootingAndBadSnapshotsFallBackToColdBoot() async throws {
        let spec = try spec()
        let first = try await run(spec)
        #expect(first.status == 0, "\(first.output)")
        #expect(first.output.contains("a: boot snapshot: no boot snapshot cached for this configuration yet; cold boot"), "\(first.output)")
        #expect(first.output.contains("s: saved the boot snapshot"), "\(first.output)")
        #expect(first.output.contains("a: saved the boot snapshot"), "\(first.output)")
        // Private: only the owner can read snapshots.
        var st = stat()
        #expect(stat(try entry("s"), &st) == 0 && st.st_mode & 0o777 == 0o700)

        let second = try await run(spec)
        #expect(second.status == 0, "\(second.output)")
        #expect(second.output.contains("a: restored from the boot snapshot"), "\(second.output)")
        #expect(second.output.contains("s: restored from the boot snapshot"), "\(second.output)")
        #expect(!second.output.contains("cold boot"), "\(second.output)")
        #expect(!second.output.contains("connected to the guest root shell"), "a guest booted: \(second.output)")

        // A different configuration never uses the old snapshot.
        let stale = try await run(try self.spec(minimalMemory: 384))
        #expect(stale.status == 0, "\(stale.output)")
        #expect(stale.output.contains("a: boot snapshot: the cached boot snapshot") && stale.output.contains("is stale ('arg 512' is now 'arg 384'); not using it; cold boot"),
                "\(stale.output)")
        #expect(stale.output.contains("s: restored from the boot snapshot"), "\(stale.output)")

        // A truncated state file is caught before QEMU sees it.
        let a = try entry("a")
        try Data(try Data(contentsOf: URL(fileURLWithPath: a + "/state")).prefix(1000)).write(to: URL(fileURLWithPath: a + "/state"))
        try FileManager.default.removeItem(atPath: try entry("s") + "/ram")
        let damaged = try await run(spec)
        #expect(damaged.status == 0, "\(damaged.output)")
        #expect(damaged.output.contains("a: boot snapshot: the cached boot snapshot \(a) is unusable (state has 1000 bytes, expected"), "\(damaged.output)")
        #expect(damaged.output.contains("is unusable (ram is missing); removed it; cold boot"), "\(damaged.output)")
        #expect(damaged.output.contains("a: saved the boot snapshot"), "\(damaged.output)")

        // State that passes the checks but QEMU cannot load: fall back, say why.
        let garbled = try entry("a")
        let state = URL(fileURLWithPath: garbled + "/state")
        var bytes = try Data(contentsOf: state)
        for i in stride(from: 64, to: bytes.count, by: 97) { bytes[i] ^= 0x5A }
        try bytes.write(to: state)
        let manifestURL = URL(fileURLWithPath: garbled + "/manifest.json")
        var manifest = try JSONDecoder().decode(SnapshotCache.Manifest.self, from: Data(contentsOf: manifestURL))
        manifest.files["state"]?.checksum = try SnapshotCache.checksum(state.path)
        try JSONEncoder().encode(manifest).write(to: manifestURL)
        let unloadable = try await run(spec)
        #expect(unloadable.status == 0, "\(unloadable.output)")
        #expect(unloadable.output.contains("a: boot snapshot: cannot restore \(garbled)") && unloadable.output.contains("falling back to a cold boot"),
                "\(unloadable.output)")
        #expect(processes(mentioning: cache.path).isEmpty)
    }
}
