import Foundation
import Glibc
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The `vouch` command as users run it: specs, scripts, exit statuses, signals.
@Suite(.serialized)
final class CLITests: ScratchSuite {
    init() throws { try super.init(prefix: "vouch-cli") }

    @Test func malformedSpecsAreRejectedBeforeAnythingStarts() async throws {
        let before = runDirectories()
        let cases: [(String, String)] = [
            (#"{"machines": {"a": {"memroy": 512}}}"#, "machines.a.memroy: unknown key (did you mean memory?)"),
            (#"{"machines": {"a": {"backend": "vmware"}}}"#, "unknown backend 'vmware'"),
            (#"{"machines": {"a": {"image": "nonexistent"}}}"#, "guest image 'nonexistent' not found"),
            (#"{"machines": {"a": {"kernel": "/no/such/kernel"}}}"#, "kernel /no/such/kernel does not exist"),
            (#"{"machines": "#, "is not valid JSON"),
            (#"{"machines": {"a": {"backend": "firecracker", "vlans": [], "binary": "/no/firecracker"}}}"#,
             "a: the firecracker backend cannot run here: /no/firecracker does not exist or is not executable"),
            (#"{"machines": {"a": {"backend": "cloud-hypervisor", "vlans": [1]}}}"#,
             "the cloud-hypervisor backend needs \"network\": \"tap\" to join VLANs"),
        ]
        for (i, (json, expected)) in cases.enumerated() {
            let spec = try write("bad\(i).json", json)
            let (status, output) = try await runCLI(["run", spec, "-o", dir.appendingPathComponent("out").path])
            #expect(status == 2, "\(json): status \(status)")
            #expect(output.contains(expected), "\(json): \(output)")
        }
        #expect(runDirectories() == before)
    }

    @Test func scriptCompileErrorsPointAtTheScript() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let script = try write("broken.swift", "let x = 1\ntry await machine.succeed(42)\n")
        let (status, output) = try await runCLI(["check", spec, "--script", script])
        #expect(status == 2)
        #expect(output.contains("broken.swift:2:"), "\(output)")
    }

    @Test func pythonScriptSyntaxErrorsPointAtTheScript() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let good = try write("good.py", "machine.succeed('true')\n")
        #expect(try await runCLI(["check", spec, "--script", good]).status == 0)
        let bad = try write("bad.py", "machine.succeed('true')\nif True\n    pass\n")
        let (status, output) = try await runCLI(["check", spec, "--script", bad])
        #expect(status == 2)
        #expect(output.contains("bad.py\", line 2"), "\(output)")
    }

    /// Every global the issue promises scripts: node variables (mangled),
    /// `machine` for a single node, `driver`, `vlans`, the helpers.
    @Test func scriptGlobalsTypeCheck() async throws {
        let spec = try write("two.json", #"{"machines": {"web-server": {"image": "minimal"}, "client": {"image": "minimal"}}}"#)
        let script = try write("globals.swift", """
            let all: [Machine] = [web_server, client]
            let numbers: [Int] = vlans
            let d: Driver = driver
            try await subtest("s") { try await waitAll(all) { try await $0.succeed("true") } }
            try await retry(attempts: 2, delay: 0.1) { try assertTrue(numbers == [1] && d.machines.count == 2) }
            try await retry(timeout: 1) { try assertFalse(false); try assertNotEqual(1, 2) }
            _ = try await assertThrows { try await client.fail("true") }
            """)
        let (status, output) = try await runCLI(["check", spec, "--script", script])
        #expect(status == 0, "\(output)")
    }

    @Test func scriptFailureReportsScriptLineAndJUnit() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let script = try write("fails.swift", """
            try await subtest("passes") { try await machine.succeed("true") }
            try await subtest("fails") {
                try await machine.succeed("echo visible-output; exit 4")
            }
            """)
        let out = dir.appendingPathComponent("out-fail")
        let junit = dir.appendingPathComponent("report.xml")
        let (status, output) = try await runCLI(["run", spec, "--script", script, "-o", out.path, "--junit-xml", junit.path])
        #expect(status == 1)
        #expect(output.contains("fails.swift:3: machine: command `echo visible-output; exit 4` failed (exit code 4)"), "\(output)")
        #expect(output.contains("visible-output"))
        let xml = try String(contentsOf: junit, encoding: .utf8)
        #expect(xml.contains(#"tests="2" failures="1""#), "\(xml)")
        #expect(xml.contains("exit code 4"))
        let log = try String(contentsOf: out.appendingPathComponent("vouch.log"), encoding: .utf8)
        #expect(log.contains("subtest: fails"))
    }

    @Test func globalTimeoutExits143AndTearsDown() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let script = try write("hang.swift", "try await machine.succeed(\"true\")\ntry await Task.sleep(for: .seconds(3600))\n")
        let (status, output) = try await runCLI(["run", spec, "--script", script, "-o", dir.appendingPathComponent("out-t").path, "--global-timeout", "20"])
        #expect(status == 143)
        #expect(output.contains("timeout reached; test terminating..."))
        #expect(output.contains("finished: tearing down"))
    }

    @Test func closedOutputPipeStillTearsDown() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let before = runDirectories()
        let bash = try ChildProcess("bash", ["-c", "set -o pipefail; '\(vouchBinary)' run '\(spec)' -o '\(dir.path)/out-pipe' 2>&1 | head -1 >/dev/null; echo ${PIPESTATUS[0]}"])
        let output = OutputCollector()
        async let a: Void = output.drain(bash.stdout!.queue)
        async let b: Void = output.drain(bash.stderr!.queue)
        _ = try await within(seconds: 300) { try await bash.waitForExit() }
        _ = await (a, b)
        #expect(output.text.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "vouch's exit status: \(output.text)")
        #expect(runDirectories() == before, "the run directory must be removed even though stderr was closed")
    }

    @Test(arguments: [SIGINT, SIGTERM], ["vde", "tap"])
    func signalDuringBootTearsEverythingDown(signal: Int32, network: String) async throws {
        let spec = try write("two-\(network).json", #"{"network": "\#(network)", "machines": {"a": {"image": "minimal"}, "b": {"image": "systemd"}}}"#)
        let out = dir.appendingPathComponent("out-int")
        let process = try ChildProcess(vouchBinary, ["run", spec, "-o", out.path])
        let output = OutputCollector()
        async let a: Void = output.drain(process.stdout!.queue)
        async let b: Void = output.drain(process.stderr!.queue)
        // Interrupt once both QEMUs run, while the guests are still booting.
        try await within(seconds: 120) {
            while output.text.components(separatedBy: "started qemu-system").count < 3 {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let marker = "/vouch-\(process.pid)-"
        // With a TAP network, nsenter execs QEMU after Vouch logged "started";
        // mid-exec a process's cmdline reads empty, so wait for both to show.
        var running = processes(mentioning: marker)
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(10))
        while running.filter({ $0.contains("qemu-system") }).count < 2, clock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            running = processes(mentioning: marker)
        }
        #expect(running.filter { $0.contains("qemu-system") }.count == 2, "both QEMUs should be running: \(running)")
        var namespaceID: String?
        if network == "vde" {
            #expect(running.contains { $0.contains("vde_switch") }, "the VLAN switch should be running: \(running)")
        } else {
            let holder = children(of: process.pid).first { $0.comm == "cat" }
            namespaceID = holder.flatMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0.pid)/ns/net") }
            #expect(namespaceID != nil, "the network namespace holder should be running")
        }
        kill(process.pid, signal)
        let status = try await within(seconds: 30) { try await process.waitForExit() }
        _ = await (a, b)
        #expect(status == .exited(130), "\(output.text)")
        #expect(processes(mentioning: marker).isEmpty)
        if let namespaceID { #expect(processes(inNetworkNamespace: namespaceID).isEmpty, "the TAP network's namespace must be gone") }
        #expect(!runDirectories().contains { $0.hasPrefix("vouch-\(process.pid)-") })
    }
}

/// Direct children of `parent`: pid and command name.
func children(of parent: pid_t) -> [(pid: String, comm: String)] {
    let fm = FileManager.default
    return ((try? fm.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid in
        guard pid.allSatisfy(\.isNumber), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        let comm = String(stat[stat.index(after: open)..<close])
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        return fields.count > 1 && fields[1] == "\(parent)" ? (pid, comm) : nil
    }
}

/// `scripts/install` lays Vouch out under a prefix; Swift and Python scripts
/// then run from there, with nothing taken from the source checkout.
@Suite(.serialized)
struct InstallTests {
    @Test func installedVouchRunsSwiftAndPythonScripts() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-install-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let prefix = dir.appendingPathComponent("prefix")
        let (installed, log) = try await ChildProcess.run(
            packageRoot.appendingPathComponent("scripts/install").path, ["--from", packageRoot.appendingPathComponent(".build/debug").path, prefix.path])
        #expect(installed == .exited(0), "\(log)")
        let vouch = prefix.appendingPathComponent("bin/vouch").path
        let (helped, help) = try await ChildProcess.run(prefix.appendingPathComponent("bin/nixos-test-driver").path, ["--help"])
        #expect(helped == .exited(0) && help.contains("This is Vouch answering to the name nixos-test-driver"), "\(help)")
        let spec = packageRoot.appendingPathComponent("Tests/Conformance/one-node.json").path
        let swiftScript = dir.appendingPathComponent("t.swift")
        try "try assertEqual(try await machine.succeed(\"echo swift-ok\"), \"swift-ok\\n\")\n".write(to: swiftScript, atomically: true, encoding: .utf8)
        let pyScript = dir.appendingPathComponent("t.py")
        try """
            import vouch_driver
            assert vouch_driver.__file__.startswith("\(prefix.path)/lib/vouch/python/"), vouch_driver.__file__
            assert machine.succeed("echo py-ok") == "py-ok\\n"
            """.write(to: pyScript, atomically: true, encoding: .utf8)
        var env = ProcessInfo.processInfo.environment
        env["VOUCH_IMAGES"] = try GuestImage.resolve("minimal").kernel.deletingLastPathComponent().deletingLastPathComponent().path
        env["XDG_CACHE_HOME"] = dir.appendingPathComponent("cache").path
        for script in [swiftScript, pyScript] {
            let (status, output) = try await ChildProcess.run(vouch, ["run", spec, "--script", script.path, "-o", dir.appendingPathComponent("out").path],
                                                              environment: env, workingDirectory: dir.path)
            #expect(status == .exited(0), "\(script.lastPathComponent): \(output.suffix(2000))")
        }
        // The Swift script was compiled against the installed library, into the private cache.
        let cached = try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("cache/vouch/scripts").path)
        #expect(cached.contains { $0.hasPrefix("script-") })
        let (listed, images) = try await ChildProcess.run(vouch, ["images", "list"], environment: env)
        #expect(listed == .exited(0) && images.contains("minimal"), "\(images)")
    }
}
