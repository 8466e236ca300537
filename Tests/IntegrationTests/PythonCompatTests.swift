import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The nixpkgs-style conformance scripts in Tests/Conformance, run unchanged
/// through `vouch run --script X.py` against real guests.
@Suite(.serialized)
struct PythonCompatTests {
    let conformance = packageRoot.appendingPathComponent("Tests/Conformance")

    func run(_ spec: String, _ script: String, _ extra: [String] = [], env: [String: String] = [:]) async throws -> (status: Int32, output: String, out: URL) {
        let out = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-py-\(UUID().uuidString.prefix(8))")
        // A private TMPDIR: the run directory must be gone from it afterwards.
        let tmp = out.appendingPathComponent("tmp")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        environment["TMPDIR"] = tmp.path
        environment["XDG_RUNTIME_DIR"] = nil
        environment.merge(env) { _, new in new }
        let (status, output) = try await runCLI(
            ["run", conformance.appendingPathComponent(spec).path, "--script", conformance.appendingPathComponent(script).path,
             "-o", out.path] + extra, environment: environment)
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp.path).isEmpty, "the run left files in its TMPDIR")
        #expect(processes(mentioning: tmp.path).isEmpty, "processes of the run were left behind")
        #expect(processes(mentioning: conformance.appendingPathComponent(script).path).isEmpty, "the Python interpreter was left behind")
        return (status, output, out)
    }

    @Test func machineAPIScriptPasses() async throws {
        let (status, output, out) = try await run("two-nodes.json", "machine_api.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 0, "\(output.suffix(3000))")
        let junit = try String(contentsOf: out.appendingPathComponent("junit.xml"), encoding: .utf8)
        #expect(junit.contains(#"name="lazy boot and commands""#))
        #expect(junit.contains(#"name="an inner subtest""#))
        #expect(junit.contains(#"failures="0""#))
        #expect(output.contains("Polling condition succeeded: nginx_running"))
        #expect(output.contains("a line from the script"))
    }

    @Test func failedCommandNamesTheScriptLine() async throws {
        let (status, output, out) = try await run("one-node.json", "failing.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 1)
        #expect(output.contains("failing.py:6: failing.py failed: RequestedAssertionFailed: solo: command `echo visible-output; exit 4` failed (exit code 4)"), "\(output.suffix(3000))")
        #expect(output.contains("| visible-output"))
        #expect(!output.contains("never reached"))
        let junit = try String(contentsOf: out.appendingPathComponent("junit.xml"), encoding: .utf8)
        #expect(junit.contains(#"failures="1""#), "\(junit)")
    }

    @Test func failedAssertionShowsTheTraceback() async throws {
        let (status, output, out) = try await run("one-node.json", "assertion.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 1)
        #expect(output.contains("assertion.py:4: assertion.py failed: RequestedAssertionFailed: 'Linux' != 'Plan9'"), "\(output.suffix(3000))")
        #expect(output.contains(#"line 7, in <module>"#))
        #expect(output.contains(#"line 4, in check_kernel"#))
    }

    @Test func globalTimeoutEndsAPythonScript() async throws {
        let (status, output, out) = try await run("one-node.json", "timeout.py", ["--global-timeout", "20"])
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 143, "\(output.suffix(2000))")
        #expect(output.contains("timeout reached; test terminating..."))
    }

    /// A start script like nixpkgs' `run-solo-vm`, booting the minimal image.
    func standInStartScript(in dir: URL) throws -> URL {
        let start = dir.appendingPathComponent("run-solo-vm")
        let image = try GuestImage.resolve("minimal")
        try """
            #!/bin/sh
            exec qemu-system-x86_64 -M pc -accel tcg -m 256 -nodefaults -kernel \(image.kernel.path) \
              -initrd \(image.initrd!.path) -append "console=ttyS0 panic=-1 $QEMU_KERNEL_PARAMS" $QEMU_OPTS "$@"
            """.write(to: start, atomically: true, encoding: .utf8)
        chmod(start.path, 0o755)
        return start
    }

    /// Today's nixpkgs API: test_driver imports, timedelta, exact texts,
    /// attempt_timeout, QMP, retry's new form, the NixOS host name.
    @Test func todaysAPIScriptPasses() async throws {
        let (status, output, out) = try await run("one-systemd.json", "today_api.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains(#"Test "a failing subtest" failed with error: ""#), "\(output.suffix(3000))")
        let junit = try String(contentsOf: out.appendingPathComponent("junit.xml"), encoding: .utf8)
        #expect(junit.contains(#"name="a failing subtest""#) && junit.contains(#"failures="1""#), "\(junit)")
    }

    /// Screens, keys, OCR, consoles and QMP events on a VM with a VGA card.
    @Test func graphicalCallsWorkOnAScreen() async throws {
        let (status, output, out) = try await run("graphical.json", "screens.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 0, "\(output.suffix(3000))")
    }

    /// A failing test leaves a PNG of each display, named in the JUnit failure.
    @Test func aFailureSavesEveryScreen() async throws {
        let (status, output, out) = try await run("failure-screens.json", "failing_screen.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 1, "\(output.suffix(3000))")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.path)
        let pictures = files.filter { $0.hasPrefix("failure-") && $0.hasSuffix(".png") }
        #expect(pictures.count == 1 && pictures.first?.hasPrefix("failure-shown-") == true, "\(files)")
        let png = try Data(contentsOf: out.appendingPathComponent(pictures.first ?? "none"))
        #expect(pngSize(png) != nil)
        let junit = try String(contentsOf: out.appendingPathComponent("junit.xml"), encoding: .utf8)
        #expect(junit.contains("screens at the failure: \(pictures.first ?? "?")"), "\(junit)")
    }

    /// No nodes at all; the script makes its machines from start scripts.
    @Test func aTestWithoutNodesCreatesItsMachines() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-pynodes-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let start = try standInStartScript(in: dir)
        let (status, output, out) = try await run("no-nodes.json", "no_nodes.py", env: ["VOUCH_CONFORMANCE_START_SCRIPT": start.path])
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains("created machine made from \(start.path)"), "\(output.suffix(2000))")
    }

    /// nixpkgs' `log.error` ends the test.
    @Test func logErrorEndsTheTest() async throws {
        let (status, output, out) = try await run("no-nodes.json", "log_error.py")
        defer { try? FileManager.default.removeItem(at: out) }
        #expect(status == 1, "\(output.suffix(2000))")
        #expect(output.contains("stopping here on purpose"))
        #expect(!output.contains("never reached"))
    }

    @Test func inlineConfigScriptRuns() async throws {
        // A driverConfiguration whose test_script is the script text itself.
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-pycfg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let start = try standInStartScript(in: dir)
        let config: JSONValue = [
            "vms": ["solo": ["name": "solo", "start_script": .string(start.path)]],
            "vlans": [1], "global_timeout": 600,
            "test_script": "machine.succeed('true')\nassert solo.succeed('echo hi') == 'hi\\n'\n",
        ]
        let configPath = dir.appendingPathComponent("config.json")
        try config.description.write(to: configPath, atomically: true, encoding: .utf8)
        let (status, output) = try await runCLI(["run", "--config", configPath.path, "-o", dir.appendingPathComponent("out").path])
        #expect(status == 0, "\(output.suffix(3000))")
    }
}
