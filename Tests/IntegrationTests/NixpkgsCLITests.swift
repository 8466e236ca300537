import Foundation
import Testing
@testable import Vouch
@testable import VouchSupport
@testable import VouchTesting

/// Vouch called as nixpkgs calls its driver: the built binary through a
/// link named `nixos-test-driver`, with both generations of the command
/// line. Two guests boot in all (one per generation); the failing runs fail
/// before any machine command.
@Suite(.serialized)
final class NixpkgsCLITests: ScratchSuite {
    var driver: String { dir.appendingPathComponent("nixos-test-driver").path }
    var startScript: String { dir.appendingPathComponent("run-legacy-vm").path }

    init() throws {
        try super.init(prefix: "vouch-nixcli")
        try FileManager.default.createSymbolicLink(atPath: driver, withDestinationPath: vouchBinary)
        #expect(try CompatibilityTests().writeStartScript(in: dir) == startScript)
    }

    func runDriver(_ args: [String], environment extra: [String: String] = [:]) async throws -> (status: Int32, output: String) {
        var env = ProcessInfo.processInfo.environment
        for name in NixpkgsDriverArguments.environmentNames + ["LOGFILE"] { env[name] = nil }
        env.merge(extra) { $1 }
        let (status, output) = try await ChildProcess.run(driver, args, environment: env, workingDirectory: dir.path, timeout: 600)
        guard case .exited(let code) = status else { return (-1, output) }
        return (code, output)
    }

    func makeDirectory(_ name: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url.path
    }

    func config(testScript: String) throws -> String {
        try write("driverConfiguration-\(UUID().uuidString.prefix(6)).json", """
            {"vms": {"legacy": {"name": "legacy", "start_script": "\(startScript)"}}, "containers": {},
             "vlans": [], "global_timeout": 600, "enable_ssh_backdoor": false, "test_script": "\(testScript)"}
            """)
    }

    @Test func helpAndRefusalsWithoutBooting() async throws {
        let (helped, help) = try await runDriver(["--help"])
        #expect(helped == 0)
        #expect(help.contains("This is Vouch answering to the name nixos-test-driver"), "\(help)")
        #expect(help.contains("--start-scripts") && help.contains("-c, --config FILE"))
        let (unknown, message) = try await runDriver(["--config", "x.json", "--frobnicate=3"])
        #expect(unknown == 2)
        #expect(message.contains("nixos-test-driver: error: unrecognized arguments: --frobnicate"), "\(message)")
        let (mixed, why) = try await runDriver(["--config", "x.json", "--start-scripts", startScript])
        #expect(mixed == 2 && why.contains("--start-scripts: not allowed with -c/--config"), "\(why)")
        let (noDir, said) = try await runDriver(["--config", "x.json", "-o", dir.appendingPathComponent("absent").path])
        #expect(noDir == 2 && said.contains("absent is not a directory"), "\(said)")
        // Vouch's own name keeps Vouch's command line.
        let (status, output) = try await runCLI(["run", "x.json", "--frobnicate"])
        #expect(status != 0 && output.contains("Unknown option '--frobnicate'"), "\(output)")
    }

    /// run.nix and driver.nix's form: --config, -o, --junit-xml, --log-level,
    /// LOGFILE=/dev/null and --debug-hook=PATH (a prefix of --debug-hook-attach).
    @Test func currentFormPassesAndFails() async throws {
        let pass = try write("pass.py", "assert legacy.succeed('hostname') == 'legacy\\n', 'wrong host'\nprint('current-form-ran')\n")
        let out = try makeDirectory("out")
        let (status, output) = try await runDriver(
            ["--config", try config(testScript: pass), "-o", out, "--junit-xml", "report.xml", "--log-level", "info", "--debug-hook=/tmp/x"],
            environment: ["LOGFILE": "/dev/null"])
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains("current-form-ran"))
        #expect(output.contains("--debug-hook-attach /tmp/x: Vouch has no SSH debug hook"), "\(output.suffix(3000))")
        let log = try String(contentsOfFile: out + "/vouch.log", encoding: .utf8)
        #expect(log.contains("legacy"), "\(log)")
        // nixpkgs puts a relative --junit-xml in the output directory.
        let junit = try String(contentsOfFile: out + "/report.xml", encoding: .utf8)
        #expect(junit.hasPrefix("<?xml") && junit.contains(#"<testsuite name="nixos-test" tests="1" failures="0""#), "\(junit)")

        // A failing script, before any machine command; LOGFILE gets the XML log.
        let fail = try write("fail.py", "raise Exception('current-form-fails')\n")
        let out2 = try makeDirectory("out2")
        let logfile = dir.appendingPathComponent("log.xml").path
        let (failed, failure) = try await runDriver(["-c", try config(testScript: fail), "--output_directory=\(out2)", "--junit-xml", "j.xml"],
                                                    environment: ["LOGFILE": logfile, "logLevel": "info"])
        #expect(failed == 1, "\(failure.suffix(3000))")
        #expect(failure.contains("Exception: current-form-fails"))
        let xml = try String(contentsOfFile: logfile, encoding: .utf8)
        #expect(xml.hasPrefix("<?xml") && xml.contains("<logfile><line>") && xml.contains("current-form-fails") && xml.hasSuffix("</logfile>\n"), "\(xml)")
        #expect(try String(contentsOfFile: out2 + "/j.xml", encoding: .utf8).contains(#"failures="1""#))
    }

    /// The older generation: start scripts, VLANs, global timeout and the
    /// script as arguments, then all of it from the environment.
    @Test func olderFormPassesAndFails() async throws {
        try "assert legacy.succeed('hostname') == 'legacy\\n', 'wrong host'\nprint('older-form-ran')\n"
            .write(to: dir.appendingPathComponent("test.py"), atomically: true, encoding: .utf8)
        let (status, output) = try await runDriver(["--start-scripts", startScript, "--vlans", "1", "--global-timeout", "300", "test.py"])
        #expect(status == 0, "\(output.suffix(3000))")
        #expect(output.contains("older-form-ran"))
        // Without -o the output directory is the working directory, as in nixpkgs.
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("vouch.log").path))
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("junit.xml").path))

        // From the environment; the script proves the start scripts were read, then fails.
        let fail = try write("fail.py", """
            assert [m.name for m in machines] == ['legacy'], [m.name for m in machines]
            raise Exception('older-form-env-fails')
            """)
        let out = try makeDirectory("out-env")
        let (failed, failure) = try await runDriver(["-o", out, "-K"], environment: [
            "startScripts": startScript, "vlans": "1", "globalTimeout": "300", "testScript": fail])
        #expect(failed == 1, "\(failure.suffix(3000))")
        #expect(failure.contains("Exception: older-form-env-fails"), "\(failure.suffix(3000))")
        #expect(FileManager.default.fileExists(atPath: out + "/vouch.log"))
        // -K kept the run's state directory: it exists, and the test removes it.
        let kept = failure.components(separatedBy: "kept machine state in ").dropFirst().first?.prefix { $0 != "\n" }
        #expect(kept != nil, "\(failure.suffix(3000))")
        if let kept, kept.hasPrefix("/") {
            #expect(FileManager.default.fileExists(atPath: String(kept)))
            try? FileManager.default.removeItem(atPath: String(kept))
        }
    }
}
