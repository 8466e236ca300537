import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The nixpkgs side of the contract, and concurrent runs on one host.
@Suite(.serialized)
struct CompatibilityTests {
    /// A stand-in for nixpkgs' `run-NAME-vm`: it checks the environment and
    /// working directory the driver must give it, honours QEMU_OPTS and
    /// QEMU_KERNEL_PARAMS, mounts SHARED_DIR, and appends the driver's
    /// arguments ("$@") as the real scripts do.
    func writeStartScript(in dir: URL) throws -> String {
        let image = try GuestImage.resolve("minimal")
        let script = """
            #!/bin/sh
            set -e
            [ "$USE_TMPDIR" = 1 ] || { echo "USE_TMPDIR not set" >&2; exit 9; }
            [ -d "$TMPDIR" ] && [ -d "$SHARED_DIR" ] || { echo "TMPDIR/SHARED_DIR missing" >&2; exit 9; }
            [ "$(pwd)" = "$TMPDIR" ] || { echo "cwd $(pwd) is not TMPDIR $TMPDIR" >&2; exit 9; }
            exec qemu-system-x86_64 -M pc -accel tcg -m 256 -nodefaults -no-user-config \\
              -kernel \(image.kernel.path) -initrd \(image.initrd!.path) \\
              -append "console=ttyS0 panic=-1 vouch.hostname=legacy $QEMU_KERNEL_PARAMS" \\
              -virtfs local,path="$SHARED_DIR",security_model=none,mount_tag=shared \\
              $QEMU_OPTS "$@"
            """
        let url = dir.appendingPathComponent("run-legacy-vm")
        try script.write(to: url, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: url.path)
        return url.path
    }

    @Test func nixpkgsDriverConfigurationWithStartScript() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-compat-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let start = try writeStartScript(in: dir)
        let config = dir.appendingPathComponent("driver.json")
        try """
            {"vms": {"legacy": {"name": "legacy", "start_script": "\(start)"}},
             "vlans": [], "global_timeout": 600, "enable_ssh_backdoor": false}
            """.write(to: config, atomically: true, encoding: .utf8)
        let note = dir.appendingPathComponent("note.txt")
        try "via SHARED_DIR\n".write(to: note, atomically: true, encoding: .utf8)
        let script = dir.appendingPathComponent("t.swift")
        try """
            try await assertEqual(legacy.succeed("hostname"), "legacy\\n")
            try assertContains(try await machine.succeed("cat /proc/cmdline"), "tsc_early_khz=")
            try await machine.copyFromHost("\(note.path)", to: "/root/note.txt")
            try await assertEqual(machine.succeed("cat /root/note.txt"), "via SHARED_DIR\\n")
            try await machine.shutdown()
            """.write(to: script, atomically: true, encoding: .utf8)
        let (status, output) = try await runCLI(["run", "--config", config.path, "--script", script.path,
                                                 "-o", dir.appendingPathComponent("out").path])
        #expect(status == 0, "\(output)")
        #expect(output.contains("legacy: powered off"))
    }

    @Test func twoRunsAtOnceDoNotCollide() async throws {
        async let first = RealRun.run([guest("machine")], name: "concurrentA") { d in
            try await d.machine("machine").succeed("echo a > /tmp/shared/from-a")
        }
        async let second = RealRun.run([guest("machine")], name: "concurrentB") { d in
            try await d.machine("machine").succeed("echo b > /tmp/shared/from-b")
        }
        let (a, b) = try await (first, second)
        #expect(a.outcome == .passed)
        #expect(b.outcome == .passed)
        #expect(a.driver.runDirectory != b.driver.runDirectory)
    }
}
