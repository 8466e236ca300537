import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// Every Machine API call on real TCG guests: one systemd guest, one minimal.
/// One boot serves all checks, to keep the suite inside CI's budget.
@Suite(.serialized)
struct MachineAPITests {
    @Test func everyMachineCallOnRealGuests() async throws {
        let hostFile = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-copy-\(getpid()).bin")
        var blob = [UInt8](repeating: 0, count: 3 * 1024 * 1024)
        for i in blob.indices { blob[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        try Data(blob).write(to: hostFile)
        defer { try? FileManager.default.removeItem(at: hostFile) }
        let hostFilePath = hostFile.path
        let blobSum = sha256(blob)

        let run = try await RealRun.run([guest("server", image: "systemd"), guest("client")]) { d in
            let server = try d.machine("server")
            let client = try d.machine("client")
            try await d.startAll()
            let serverBooted = await server.booted
            let clientBooted = await client.booted
            let bothBooted = serverBooted && clientBooted
            #expect(bothBooted)

            try await subtest("execute, succeed, fail") {
                let r = try await client.execute("echo out; echo err >&2; exit 7")
                #expect(r.status == 7)
                #expect(r.text == "out\n")
                let v1 = try await client.succeed("echo a", "printf b")
                #expect(v1 == "a\nb")
                let v2 = try await client.fail("false; echo not-reached")
                #expect(v2 == "")
                let e = await #expect(throws: VouchError.self) { try await client.succeed("echo doomed; exit 3") }
                #expect(e?.kind == .commandFailed && e?.status == 3 && e?.machine == "client")
                #expect(e?.outputTail?.contains("doomed") == true)
                let e2 = await #expect(throws: VouchError.self) { try await client.fail("true") }
                #expect(e2?.kind == .commandSucceeded)
            }

            try await subtest("hostname comes from the spec") {
                let v3 = try await server.succeed("hostname")
                #expect(v3 == "server\n")
                let v4 = try await client.succeed("hostname")
                #expect(v4 == "client\n")
            }

            try await subtest("binary-safe output") {
                let r = try await client.execute("printf 'a\\000b\\377\\036VOUCH:fake:0\\n'; printf tail")
                #expect(r.output == [0x61, 0, 0x62, 0xFF, 0x1E] + Array("VOUCH:fake:0\ntail".utf8))
                let big = try await server.execute("head -c 50000000 /dev/zero | tr '\\0' x")
                #expect(big.output.count == 50_000_000)
                #expect(big.output.allSatisfy { $0 == UInt8(ascii: "x") })
                let nul = await #expect(throws: VouchError.self) { try await client.execute("echo a\u{0}b") }
                #expect(nul?.message.contains("NUL") == true)
            }

            try await subtest("a command that never returns hits its deadline; the shell stays usable") {
                let e = await #expect(throws: VouchError.self) { try await client.succeed("sleep 1000", timeout: 2) }
                #expect(e?.kind == .timeout)
                let v5 = try await client.succeed("echo still-here")
                #expect(v5 == "still-here\n")
            }

            try await subtest("waits") {
                try await client.succeed("(sleep 2; touch /tmp/later) >/dev/null 2>&1 &")
                try await client.waitForFile("/tmp/later", timeout: 60)
                try await client.waitUntilSucceeds("test -e /tmp/later", timeout: 30)
                try await client.succeed("(sleep 1; rm /tmp/later) >/dev/null 2>&1 &")
                try await client.waitUntilFails("test -e /tmp/later", timeout: 30)
                let e = await #expect(throws: VouchError.self) { try await client.waitForFile("/nope", timeout: 2) }
                #expect(e?.kind == .timeout)
                #expect(e?.message.contains("(timeout=2.0): waiting for file /nope") == true)
            }

            try await subtest("systemd units") {
                try await server.waitForUnit("multi-user.target")
                try await server.waitForUnit("nginx.service")
                try await server.requireUnitState("nginx.service", "active")
                let v6 = try await server.getUnitProperty("nginx.service", "LoadState")
                #expect(v6 == "loaded")
                let info = try await server.getUnitInfo("nginx.service")
                #expect(info["Id"] == "nginx.service")
                let v7 = try await server.systemctl("is-active nginx.service").text
                #expect(v7 == "active\n")
                try await server.waitForOpenPort(80)
                let v8 = try await server.succeed("curl -sf http://localhost/").contains("nginx")
                #expect(v8)
                try await server.stopJob("nginx.service")
                try await server.waitForClosedPort(80, timeout: 60)
                try await server.startJob("nginx.service")
                try await server.waitForOpenPort(80, timeout: 60)
                try await server.waitForOpenUnixSocket("/run/systemd/private", timeout: 30)
                // A wait that times out says what it last saw, with the failed units and the journal tail.
                let closed = await #expect(throws: VouchError.self) { try await server.waitForOpenPort(8081, timeout: 3) }
                #expect(closed?.kind == .timeout)
                #expect(closed?.outputTail?.contains("failed units:") == true, "\(closed?.outputTail ?? "")")
                #expect(closed?.outputTail?.contains("last 30 journal lines:") == true)
                let v9 = try await server.journal(unit: "nginx.service", lines: 5).contains("nginx")
                #expect(v9)

                // A user's own systemd instance.
                try await server.succeed("useradd -m alice && loginctl enable-linger alice")
                try await server.waitForUnit("default.target", user: "alice", timeout: 120)
                let userState = try await server.systemctl("is-active default.target", user: "alice")
                #expect(userState.text == "active\n")
                // A unit that fails: waitForUnit gives up at once with the unit's journal.
                try await server.succeed("systemd-run --unit=doomed --property=Restart=no sh -c 'echo doomed-unit-ran; exit 1'")
                let failed = await #expect(throws: VouchError.self) { try await server.waitForUnit("doomed.service", timeout: 120) }
                #expect(failed?.kind == .unitFailed)
                // A unit nobody starts: inactive with no pending job.
                try await server.succeed("printf '[Service]\\nExecStart=/bin/true\\n' > /etc/systemd/system/idle.service && systemctl daemon-reload")
                let idle = await #expect(throws: VouchError.self) { try await server.waitForUnit("idle.service", timeout: 120) }
                #expect(idle?.kind == .unitFailed)
                #expect(idle?.message.contains("no pending jobs") == true)
            }

            try await subtest("files through the shared directory") {
                try await client.copyFromHost(hostFilePath, to: "/root/in/blob.bin")
                let sum = try await client.succeed("sha256sum /root/in/blob.bin | cut -d' ' -f1")
                #expect(sum.trimmingCharacters(in: .whitespacesAndNewlines) == blobSum)
                try await server.succeed("head -c 5000000 /dev/urandom > /root/out.bin")
                let guestSum = try await server.succeed("sha256sum /root/out.bin | cut -d' ' -f1")
                let copied = try await server.copyFromMachine("/root/out.bin", to: "copied")
                let data = try Data(contentsOf: copied)
                #expect(data.count == 5_000_000)
                #expect(sha256(Array(data)) == guestSum.trimmingCharacters(in: .whitespacesAndNewlines))
            }

            try await subtest("console") {
                let v10 = await server.getConsoleLog().contains("systemd")
                #expect(v10)
                try await server.succeed("echo console-marker-42 > /dev/ttyS0")
                let v11 = try await server.waitForConsoleText("console-marker-\\d+", timeout: 30)
                #expect(v11 == "console-marker-42")
                // stderr of commands goes to the serial console, as in NixOS.
                try await client.succeed("echo on-stderr-17 >&2")
                try await client.waitForConsoleText("on-stderr-17", timeout: 30)
            }

            try await subtest("sleep") {
                let t = ContinuousClock.now
                try await client.sleep(1)
                #expect(ContinuousClock.now - t >= .seconds(1))
            }

            try await subtest("reboot keeps the disk and the machine answers again") {
                try await server.succeed("echo kept > /root/persist; sync")
                let before = try await server.succeed("cat /proc/sys/kernel/random/boot_id")
                try await server.reboot()
                let v12 = try await server.succeed("cat /root/persist")
                #expect(v12 == "kept\n")
                let v13 = try await server.succeed("cat /proc/sys/kernel/random/boot_id")
                #expect(v13 != before)
                let clientBefore = try await client.succeed("cat /proc/sys/kernel/random/boot_id")
                try await client.reboot()
                let v14 = try await client.succeed("cat /proc/sys/kernel/random/boot_id")
                #expect(v14 != clientBefore)
            }

            try await subtest("shutdown and crash") {
                try await client.shutdown()
                let v15 = await client.booted
                #expect(v15 == false)
                let v16 = await client.isUp()
                #expect(v16 == false)
                try await server.crash()
                let v17 = await server.isUp()
                #expect(v17 == false)
                // A crashed machine boots again on its next command.
                let v18 = try await server.succeed("cat /root/persist")
                #expect(v18 == "kept\n")
            }
        }
        #expect(run.outcome == .passed)
        let cases = run.driver.junit.all
        #expect(cases.count == 11)
        #expect(cases.allSatisfy { $0.failure == nil })
    }
}

func sha256(_ bytes: [UInt8]) -> String {
    let file = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-sum-\(UUID().uuidString)")
    try? Data(bytes).write(to: file)
    defer { try? FileManager.default.removeItem(at: file) }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
    p.arguments = [file.path]
    let pipe = Pipe()
    p.standardOutput = pipe
    try? p.run()
    p.waitUntilExit()
    let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return String(out.prefix(64))
}
