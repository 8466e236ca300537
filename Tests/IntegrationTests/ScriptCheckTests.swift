import Foundation
import Testing
@testable import VouchSupport

/// `vouch check` on Python scripts: pyflakes and mypy against the stubs
/// generated from the Python layer, as nixpkgs checks scripts. Boots nothing.
@Suite(.serialized)
final class ScriptCheckTests: ScratchSuite {
    init() throws { try super.init(prefix: "vouch-script-check") }

    /// Each mistake is refused with its script line and the tool's message; the
    /// same script without it passes (the check can fail, and does not always).
    @Test func mistakesAreRefusedWithTheirLine() async throws {
        let spec = try write("one.json", #"{"machines": {"machine": {"image": "minimal"}}}"#)
        let cases: [(String, String)] = [
            ("machine.succed(\"x\")", #"check.py:3: error: "QemuMachine" has no attribute "succed""#),
            ("machne.succeed(\"true\")", "check.py:3: undefined name 'machne'"),
            ("machine.succeed(42)", #"check.py:3: error: Argument 1 to "succeed" of "BaseMachine" has incompatible type "int"; expected "str""#),
            ("machine.wait_for_unit(1)", #"check.py:3: error: Argument 1 to "wait_for_unit" of "BaseMachine" has incompatible type "int"; expected "str""#),
        ]
        let good = "start_all()\nwith subtest(\"s\"):\n    machine.succeed(\"true\")\n"
        let ok = try write("check.py", good)
        let passed = try await runCLI(["check", spec, "--script", ok])
        #expect(passed.status == 0, "\(passed.output)")
        for (line, expected) in cases {
            let script = try write("check.py", "start_all()\nout: str = machine.succeed(\"true\")\n\(line)\n")
            let (status, output) = try await runCLI(["check", spec, "--script", script])
            #expect(status == 2, "\(line): \(output)")
            #expect(output.contains(expected.replacingOccurrences(of: "check.py", with: script)), "\(line): \(output)")
        }
        // The flags skip each tool.
        let undefined = try write("check.py", "machne.succeed(\"true\")\n")
        #expect(try await runCLI(["check", spec, "--script", undefined, "--skip-lint", "--skip-type-check"]).status == 0)
        let typo = try write("check.py", "machine.succed(\"true\")\n")
        #expect(try await runCLI(["check", spec, "--script", typo, "--skip-type-check"]).status == 0)
        #expect(try await runCLI(["check", spec, "--script", typo, "--skip-lint"]).status == 2)
    }

    /// Every conformance script passes with the spec the suite runs it with.
    @Test func conformanceScriptsPass() async throws {
        let conformance = packageRoot.appendingPathComponent("Tests/Conformance")
        let pairs = [("two-nodes.json", "machine_api.py"), ("one-node.json", "failing.py"), ("one-node.json", "assertion.py"),
                     ("one-node.json", "timeout.py"), ("one-systemd.json", "today_api.py"), ("graphical.json", "screens.py"),
                     ("failure-screens.json", "failing_screen.py"), ("no-nodes.json", "no_nodes.py"), ("no-nodes.json", "log_error.py")]
        let scripts = try FileManager.default.contentsOfDirectory(atPath: conformance.path).filter { $0.hasSuffix(".py") }
        #expect(Set(scripts) == Set(pairs.map(\.1)), "a conformance script without its spec here")
        for (spec, script) in pairs {
            let (status, output) = try await runCLI(["check", conformance.appendingPathComponent(spec).path,
                                                     "--script", conformance.appendingPathComponent(script).path])
            #expect(status == 0, "\(script): \(output)")
            #expect(output.contains("type-checked by mypy"), "\(script): \(output)")
        }
    }
}
