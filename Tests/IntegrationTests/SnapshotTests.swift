import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// Snapshots on real guests: state round trips, repeated restores, and
/// networked machines restored together.
@Suite(.serialized)
struct SnapshotTests {
    @Test(arguments: ["minimal", "systemd"])
    func stateRoundTripsAndOneSnapshotRestoresManyTimes(image: String) async throws {
        let run = try await RealRun.run([guest("m", image: image)]) { d in
            let m = try d.machine("m")
            // /root is in RAM on the minimal guest and on disk on the systemd one.
            try await m.succeed("echo before > /root/before",
                                "sleep 100000 >/dev/null 2>&1 & echo $! > /root/sleeper",
                                "echo from-host-check > /tmp/shared/seen-before")
            try await m.snapshot("base")
            // The machine goes on after a snapshot, with its shared directory.
            try await m.succeed("test -f /tmp/shared/seen-before", "kill -0 $(cat /root/sleeper)")
            for round in 1...3 {
                try await m.succeed("echo after > /root/after", "kill $(cat /root/sleeper)", "sync")
                try await m.restore("base")
                #expect(try await m.succeed("cat /root/before") == "before\n", "round \(round)")
                try await m.fail("test -e /root/after")
                try await m.succeed("kill -0 $(cat /root/sleeper)")
                // The clock is current again and the shared directory is back.
                let skew = abs(Int(try await m.succeed("date +%s").trimmingCharacters(in: .whitespacesAndNewlines))! - Int(Date().timeIntervalSince1970))
                #expect(skew < 30, "guest clock off by \(skew) s")
                try await m.succeed("echo round\(round) > /tmp/shared/round", "test -f /tmp/shared/seen-before")
            }
            // A snapshot of a restored machine works too (its RAM travels in the stream).
            try await m.succeed("echo second > /root/second")
            try await m.snapshot("second")
            try await m.succeed("rm /root/second /root/before")
            try await m.restore("second")
            try await m.succeed("test -f /root/second", "test -f /root/before")
            try await m.restore("base")
            try await m.fail("test -e /root/second")
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }

    @Test(arguments: [NetworkKind.vde, .tap])
    func twoMachinesOnAVLANRestoredTogetherStillPing(network: NetworkKind) async throws {
        var spec = TestSpec(name: "snapshot-\(network)", machines: [guest("a"), guest("b")])
        spec.network = network
        var options = RunOptions(outputDirectory: RealRun.outputDirectory("snapshot-\(network)"))
        options.quiet = ProcessInfo.processInfo.environment["VOUCH_TEST_LOG"] == nil
        let driver = try Driver(spec: spec, options: options)
        let outcome = await driver.run { d in
            let (a, b) = (try d.machine("a"), try d.machine("b"))
            try await d.startAll()
            try await a.succeed("ping -c 1 -W 5 b")
            try await a.succeed("echo a-before > /root/state")
            try await b.succeed("echo b-before > /root/state")
            // A forwarded port keeps working across restores (it is host-side).
            try await a.succeed("mkdir -p /tmp/www && echo served > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
            try await a.waitForOpenPort(8080)
            let port = try await a.forwardPort(guest: 8080)
            try await d.snapshotAll("pair")
            for round in 1...2 {
                try await a.succeed("echo a-after > /root/state")
                try await b.succeed("echo b-after > /root/state")
                try await d.restoreAll("pair")
                #expect(try await a.succeed("cat /root/state") == "a-before\n", "round \(round)")
                #expect(try await b.succeed("cat /root/state") == "b-before\n", "round \(round)")
                try await a.succeed("ping -c 1 -W 5 b")
                try await b.succeed("ping -c 1 -W 5 a")
                #expect(try await hostCurl("http://127.0.0.1:\(port)/index.html") == "served\n", "round \(round)")
            }
            // A machine blocked before a restore stays blocked after it.
            try await b.block()
            try await d.restoreAll("pair")
            try await a.fail("ping -c 1 -W 2 b")
            try await b.unblock()
            try await a.waitUntilSucceeds("ping -c 1 -W 2 b", timeout: 60)
        }
        #expect(outcome == .passed, "\(outcome)")
        RealRun(driver: driver, outcome: outcome).expectNoLeftovers()
        if outcome == .passed { try? FileManager.default.removeItem(at: options.outputDirectory) }
    }

    @Test func pcBoardRoundTrip() async throws {
        var m = guest("m")
        m.qemu?.board = .pc
        let run = try await RealRun.run([m]) { d in
            let m = try d.machine("m")
            try await m.succeed("echo before > /root/before")
            try await m.snapshot("pc")
            try await m.succeed("echo after > /root/after")
            try await m.restore("pc")
            try await m.succeed("test -f /root/before", "! test -e /root/after", "ls /tmp/shared")
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }

    @Test func missingSnapshotNameIsAClearError() async throws {
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            do {
                try await m.restore("nope")
                Issue.record("restore of a missing snapshot succeeded")
            } catch let error as VouchError {
                #expect(error.message.contains("no snapshot named 'nope'"), "\(error)")
            }
            try await m.succeed("true")
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }
}
