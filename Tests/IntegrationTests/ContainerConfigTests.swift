import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// nixpkgs container nodes (`containers` in a driver configuration), with a
/// stand-in for the `run-NAME-nspawn` script NixOS would build.
@Suite(.serialized)
struct ContainerConfigTests {
    /// A stand-in for nixpkgs' `run-NAME-nspawn`: it checks the two
    /// directories the driver must pass, prints the PID line, and execs nspawn
    /// on the systemd image. Its init is a NixOS-like stage 2 that greets
    /// with "Welcome to NixOS" and execs systemd. `--console=read-only`
    /// (nspawn's default when stdin is a pipe): `passive` delivers the
    /// console only when nspawn ends, so no readiness line would arrive.
    ///
    /// `network` runs before nspawn and gives its network option (default:
    /// none); a nixpkgs script wires its veths to the VLAN bridges there.
    static func writeStandIn(_ name: String, in dir: URL,
                             network: (setup: String, option: String) = ("", "--private-network")) throws -> String {
        let image = try GuestImage.resolve("systemd")
        let root = try #require(image.rootDirectory).path
        let stage2 = dir.appendingPathComponent("stage-2-init")
        try """
            #!/bin/sh
            echo "<<< Welcome to NixOS (Vouch stand-in) >>>"
            exec /usr/lib/systemd/systemd "$@"
            """.write(to: stage2, atomically: true, encoding: .utf8)
        let script = """
            #!/bin/sh
            set -e
            [ -n "$RUN_NSPAWN_ROOT_DIR" ] && [ -d "$RUN_NSPAWN_ROOT_DIR" ] || { echo "RUN_NSPAWN_ROOT_DIR is not a directory" >&2; exit 9; }
            [ -n "$RUN_NSPAWN_SHARED_DIR" ] && [ -d "$RUN_NSPAWN_SHARED_DIR" ] || { echo "RUN_NSPAWN_SHARED_DIR is not a directory" >&2; exit 9; }
            \(network.setup)
            echo "systemd-nspawn's PID is $$"
            exec systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay --console=read-only \(network.option) \\
              --machine=\(name)-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ') --directory=\(root) \\
              --bind="$RUN_NSPAWN_SHARED_DIR":/tmp/shared --bind-ro=\(stage2.path):/vouch-stage-2 \\
              /vouch-stage-2 systemd.hostname=\(name)
            """
        return try writeExecutable(script, to: dir.appendingPathComponent("run-\(name)-nspawn"), also: stage2)
    }

    static func writeExecutable(_ text: String, to url: URL, also: URL? = nil) throws -> String {
        try text.write(to: url, atomically: true, encoding: .utf8)
        for path in [url.path] + (also.map { [$0.path] } ?? []) {
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }
        return url.path
    }

    /// A scratch directory that also holds the run directory (TMPDIR), so
    /// leftovers of any kind are found in one place.
    static func scratch(_ name: String) throws -> (dir: URL, env: [String: String]) {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-\(name)-\(getpid())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        var env = ProcessInfo.processInfo.environment
        env["TMPDIR"] = dir.appendingPathComponent("tmp").path
        env["XDG_RUNTIME_DIR"] = ""
        return (dir, env)
    }

    /// Every per-container directory nspawn keeps in /run (the stand-in
    /// names its containers itself, not `vouch-*`).
    static func allPropagationDirectories() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: NspawnHost.propagationRoot)) ?? [])
    }

    static func expectNothingLeft(in dir: URL, initsBefore: Set<Int32>, propagationBefore: Set<String>) {
        let propagation = allPropagationDirectories().subtracting(propagationBefore)
        #expect(propagation.isEmpty, "nspawn left /run/systemd/nspawn/propagate/\(propagation.sorted())")
        let holders = processes(mentioning: dir.path)
        #expect(holders.isEmpty, "processes left behind: \(holders)")
        let left = containerInits().subtracting(initsBefore)
        #expect(left.isEmpty, "container inits left behind: \(left.sorted())")
        let runDirs = (try? FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("tmp").path)) ?? []
        #expect(runDirs.isEmpty, "left in the run's TMPDIR: \(runDirs)")
    }

    @Test func configWithOnlyAContainer() async throws {
        let (dir, env) = try Self.scratch("ct-config")
        defer { try? FileManager.default.removeItem(at: dir) }
        let start = try Self.writeStandIn("ct", in: dir)
        let config = dir.appendingPathComponent("driver.json")
        try """
            {"vms": {}, "containers": {"ct": {"name": "ct", "start_script": "\(start)"}},
             "vlans": [], "global_timeout": 300}
            """.write(to: config, atomically: true, encoding: .utf8)
        let note = dir.appendingPathComponent("note.txt")
        try "via RUN_NSPAWN_SHARED_DIR\n".write(to: note, atomically: true, encoding: .utf8)
        let script = dir.appendingPathComponent("t.swift")
        try """
            try await assertEqual(ct.succeed("hostname"), "ct\\n")
            try await ct.waitForUnit("multi-user.target")
            try await ct.copyFromHost("\(note.path)", to: "/root/note.txt")
            try await assertEqual(ct.succeed("cat /root/note.txt"), "via RUN_NSPAWN_SHARED_DIR\\n")
            try await ct.succeed("touch /run/before-reboot; echo back > /root/out.txt")
            let copied = try await ct.copyFromMachine("/root/out.txt", to: "from-ct")
            try assertEqual(try String(contentsOf: copied, encoding: .utf8), "back\\n")
            try await ct.reboot()
            try await ct.fail("test -e /run/before-reboot")
            try await ct.crash()
            try await assertEqual(ct.succeed("hostname"), "ct\\n")
            try await ct.shutdown()
            """.write(to: script, atomically: true, encoding: .utf8)
        let before = containerInits()
        let propagationBefore = Self.allPropagationDirectories()
        let out = dir.appendingPathComponent("out")
        let (status, output) = try await runCLI(["run", "--config", config.path, "--script", script.path, "-o", out.path],
                                                environment: env, timeout: 300)
        #expect(status == 0, "\(output)")
        #expect(output.contains("ct: container booted; its init is pid"))
        #expect(output.contains("ct: powered off"))
        Self.expectNothingLeft(in: dir, initsBefore: before, propagationBefore: propagationBefore)
    }

    /// A VM (QEMU stand-in) and a container in one configuration, driven by
    /// its Python test_script; they share the run's /tmp/shared.
    @Test func configWithAVMAndAContainer() async throws {
        let (dir, env) = try Self.scratch("mixed-config")
        defer { try? FileManager.default.removeItem(at: dir) }
        let ct = try Self.writeStandIn("ct", in: dir)
        let vm = try CompatibilityTests().writeStartScript(in: dir)
        let config = dir.appendingPathComponent("driver.json")
        let testScript = """
            start_all()
            ct.wait_for_unit("multi-user.target")
            ct.succeed("echo from-ct > /tmp/shared/handoff")
            assert legacy.succeed("cat /tmp/shared/handoff") == "from-ct\\n"
            assert ct.succeed("hostname").strip() == "ct"
            ct.shutdown()
            legacy.shutdown()
            """
        let json: [String: Any] = [
            "vms": ["legacy": ["name": "legacy", "start_script": vm]],
            "containers": ["ct": ["name": "ct", "start_script": ct]],
            "vlans": [Int](), "global_timeout": 600, "test_script": testScript,
        ]
        try JSONSerialization.data(withJSONObject: json).write(to: config)
        let before = containerInits()
        let propagationBefore = Self.allPropagationDirectories()
        let (status, output) = try await runCLI(["run", "--config", config.path, "-o", dir.appendingPathComponent("out").path],
                                                environment: env, timeout: 600)
        #expect(status == 0, "\(output)")
        #expect(output.contains("ct: powered off") && output.contains("legacy: powered off"))
        Self.expectNothingLeft(in: dir, initsBefore: before, propagationBefore: propagationBefore)
    }

    /// On a TAP network the script runs in the test's network namespace, so
    /// it can put its own veth on a VLAN's bridge, as nixpkgs' scripts do,
    /// and the container reaches a VM there.
    @Test func startScriptWiresItsOwnVLAN() async throws {
        let (dir, _) = try Self.scratch("ct-vlan")
        defer { try? FileManager.default.removeItem(at: dir) }
        let setup = "ip link add vh-ct type veth peer name vc-ct && ip link set vh-ct master br1 up"
        var settings = NspawnSettings()
        settings.startScript = try Self.writeStandIn("ct", in: dir, network: (setup, "--network-interface=vc-ct"))
        var ct = MachineSpec(name: "ct", nspawn: settings)
        ct.vlans = []
        ct.bootTimeout = 60
        let run = try await RealRun.run([guest("vm", image: "systemd"), ct], network: .tap) { d in
            let vm = try d.machine("vm"), ct = try d.machine("ct")
            try await d.startAll()
            try await ct.succeed("ip addr add 192.168.1.77/24 dev vc-ct && ip link set vc-ct up")
            try await vm.waitUntilSucceeds("ping -c 1 -W 2 192.168.1.77", timeout: 60)
        }
        #expect(run.outcome == .passed)
    }

    /// Each way a start script can break the contract gives a boot error
    /// naming the machine and what it last printed, and leaves nothing.
    @Test func brokenStartScripts() async throws {
        let (dir, _) = try Self.scratch("ct-broken")
        defer { try? FileManager.default.removeItem(at: dir) }
        func machine(_ body: String) throws -> MachineSpec {
            var settings = NspawnSettings()
            settings.startScript = try Self.writeExecutable("#!/bin/sh\n" + body, to: dir.appendingPathComponent("run-\(UUID().uuidString.prefix(8))-nspawn"))
            var m = MachineSpec(name: "ct", nspawn: settings)
            m.vlans = []
            m.bootTimeout = 3
            return m
        }
        let cases: [(String, String, String)] = [
            ("echo 'no nspawn here'; exit 3", "ended (exit status 3) before printing \"systemd-nspawn's PID is", "no nspawn here"),
            ("echo \"systemd-nspawn's PID is $$\"; echo booting; exec sleep 60", "printed no readiness line", "booting"),
            ("echo \"systemd-nspawn's PID is $$\"; sleep 60 & sleep 60 & echo 'Welcome to NixOS'; wait", "has 2 children", "Welcome to NixOS"),
        ]
        let before = containerInits()
        let propagationBefore = Self.allPropagationDirectories()
        for (body, message, tail) in cases {
            let run = try await RealRun.run([try machine(body)], name: "brokenStartScript") { d in
                let error = await #expect(throws: VouchError.self) { try await d.startAll() }
                #expect(error?.kind == .bootFailed && error?.machine == "ct")
                #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
                #expect(error?.outputTail?.contains(tail) == true, "\(error?.outputTail ?? "")")
            }
            #expect(run.outcome == .passed)
        }
        Self.expectNothingLeft(in: dir, initsBefore: before, propagationBefore: propagationBefore)

        var settings = NspawnSettings()
        settings.startScript = dir.appendingPathComponent("run-none-nspawn").path
        var missing = MachineSpec(name: "ct", nspawn: settings)
        missing.vlans = []
        let error = #expect(throws: VouchError.self) { try NspawnProvider().prepare(missing, in: RunEnvironment()) }
        #expect(error?.kind == .missingImage && error?.machine == "ct" && error?.message.contains("not executable") == true)
    }
}
