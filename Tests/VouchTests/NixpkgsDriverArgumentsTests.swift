import Foundation
import Testing

@testable import Vouch
@testable import VouchSupport

/// nixpkgs' `nixos-test-driver` command line, every form nixpkgs uses.
@Suite struct NixpkgsDriverArgumentsTests {
    typealias Args = NixpkgsDriverArguments

    func parse(_ words: [String], _ env: [String: String] = [:]) throws(VouchError) -> Args {
        try Args.parse(words, environment: env)
    }

    func failure(_ words: [String], _ env: [String: String] = [:]) -> String? {
        do { _ = try parse(words, env); return nil } catch { return error.message }
    }

    func resolveFailure(_ word: String) -> String? {
        do { _ = try Args.resolveLong(word); return nil } catch { return error.message }
    }

    @Test func currentGenerationAsDriverNixAndRunNixCallIt() throws {
        // driver.nix: --config FILE --log-level L; run.nix: -o $out (and --debug-hook=PATH).
        let a = try parse(["--config", "/nix/store/x-driverConfiguration.json", "--log-level", "info", "-o", "/out", "--debug-hook=/nix/store/hook"])
        #expect(a.config == "/nix/store/x-driverConfiguration.json")
        #expect(a.logLevel == "info")
        #expect(a.outputDirectory == "/out")
        #expect(a.debugHookAttach == "/nix/store/hook")
        #expect(a.testScript == nil && a.startScripts.isEmpty && a.vlans.isEmpty)
        #expect(!a.keepMachineState && !a.interactive && a.warnings.isEmpty)
    }

    @Test func everyCurrentFlagInBothValueForms() throws {
        let spaced = try parse(["-c", "c.json", "-K", "-I", "--debug-hook-attach", "h", "--output_directory", "d", "--junit-xml", "j.xml", "--log-level", "debug", "--global-timeout", "30"])
        let equals = try parse(["--config=c.json", "--keep-machine-state", "--interactive", "--debug-hook-attach=h", "--output_directory=d", "--junit-xml=j.xml", "--log-level=debug", "--global-timeout=30"])
        let short = try parse(["-cc.json", "-KI", "-o=d", "--junit-xml", "j.xml", "--log-level", "debug", "--global-timeout", "30", "--debug-hook-attach", "h"])
        var expected = Args()
        expected.config = "c.json"
        expected.keepMachineState = true
        expected.interactive = true
        expected.debugHookAttach = "h"
        expected.outputDirectory = "d"
        expected.junitXML = "j.xml"
        expected.logLevel = "debug"
        expected.globalTimeout = 30
        #expect(spaced == expected)
        #expect(equals == expected)
        #expect(short == expected)
        #expect(try parse(["-c", "c.json", "--output-directory", "d2"]).outputDirectory == "d2")
        #expect(try parse(["-c", "c.json", "-Ko", "d3"]).outputDirectory == "d3")
    }

    @Test func keepVmStateIsDeprecatedButWorks() throws {
        let a = try parse(["-c", "c.json", "--keep-vm-state"])
        #expect(a.keepMachineState)
        #expect(a.warnings == ["The flag '--keep-vm-state' is deprecated. Use '--keep-machine-state' instead."])
        #expect(try parse(["-c", "c.json", "--keep-v"]).warnings.count == 1)
        #expect(try parse(["-c", "c.json", "-K"]).warnings.isEmpty)
        #expect(try parse(["-c", "c.json", "--keep-machine-state"]).warnings.isEmpty)
    }

    @Test func interactiveIsABooleanOptionalFlag() throws {
        #expect(try parse(["-c", "c", "-I", "--no-interactive"]).interactive == false)
        #expect(try parse(["-c", "c", "--no-interactive", "--interactive"]).interactive == true)
        #expect(try parse(["-c", "c", "--no-i"]).interactive == false)
    }

    /// argparse takes any unambiguous prefix of a long option.
    @Test func prefixesArgparseAccepts() throws {
        #expect(try parse(["--conf", "c.json"]).config == "c.json")
        #expect(try parse(["--c=c.json"]).config == "c.json")
        #expect(try parse(["-c", "c", "--debug-hook", "/h"]).debugHookAttach == "/h")
        #expect(try parse(["-c", "c", "--d=/h"]).debugHookAttach == "/h")
        #expect(try parse(["-c", "c", "--out", "o"]).outputDirectory == "o")
        #expect(try parse(["-c", "c", "--j", "j"]).junitXML == "j")
        #expect(try parse(["-c", "c", "--log", "warning"]).logLevel == "warning")
        #expect(try parse(["-c", "c", "--keep-m"]).keepMachineState)
        #expect(try parse(["-c", "c", "--keep"]).keepMachineState)
        #expect(try parse(["-c", "c", "--inter"]).interactive)
        #expect(try parse(["--start", "run-a-vm", "--vl", "1", "--glob", "5", "t.py"]) == {
            var e = Args(); e.startScripts = ["run-a-vm"]; e.vlans = [1]; e.globalTimeout = 5; e.testScript = "t.py"; return e
        }())
        #expect(try parse(["--he"]).help)
        #expect(try parse(["-h"]).help)
    }

    @Test func olderGenerationOnTheCommandLine() throws {
        let a = try parse(["--start-scripts", "/s/run-a-vm", "/s/run-b-vm", "--vlans", "1", "2", "--global-timeout", "300", "test.py"])
        #expect(a.startScripts == ["/s/run-a-vm", "/s/run-b-vm"])
        #expect(a.vlans == [1, 2])
        #expect(a.globalTimeout == 300)
        #expect(a.testScript == "test.py")
        #expect(a.config == nil)
        // The script first, then the lists; and an empty list.
        let b = try parse(["test.py", "--start-scripts", "run-a-vm", "--vlans"])
        #expect(b.testScript == "test.py" && b.startScripts == ["run-a-vm"] && b.vlans.isEmpty)
        // As with argparse, a list takes every word up to the next option, the script too.
        #expect(failure(["--start-scripts", "run-a-vm", "t.py"])?.hasPrefix("the following arguments are required") == true)
        // After "--" every word is positional.
        #expect(try parse(["--", "-odd.py"]).testScript == "-odd.py")
    }

    @Test func olderGenerationFromTheEnvironment() throws {
        let env = ["startScripts": "/s/run-a-vm  /s/run-b-vm", "vlans": "1 2", "globalTimeout": "120", "testScript": "/s/test.py", "logLevel": "warning"]
        let a = try parse([], env)
        #expect(a.startScripts == ["/s/run-a-vm", "/s/run-b-vm"])
        #expect(a.vlans == [1, 2])
        #expect(a.globalTimeout == 120)
        #expect(a.testScript == "/s/test.py")
        #expect(a.logLevel == "warning")
        // Flags win over the environment.
        let b = try parse(["--vlans", "3", "--global-timeout", "9", "--log-level", "error", "other.py"], env)
        #expect(b.vlans == [3] && b.globalTimeout == 9 && b.logLevel == "error" && b.testScript == "other.py")
        #expect(b.startScripts == ["/s/run-a-vm", "/s/run-b-vm"])
    }

    @Test func theCurrentGenerationIgnoresTheOlderEnvironment() throws {
        let a = try parse(["-c", "c.json"], ["startScripts": "run-a-vm", "vlans": "1", "testScript": "t.py", "globalTimeout": "5"])
        #expect(a.startScripts.isEmpty && a.vlans.isEmpty && a.testScript == nil && a.globalTimeout == nil)
        #expect(try parse(["-c", "c.json"], ["logLevel": "debug"]).logLevel == "debug")
    }

    @Test func unknownAndMalformedArgumentsFail() {
        #expect(failure(["-c", "c", "--bogus"]) == "unrecognized arguments: --bogus")
        #expect(failure(["-c", "c", "--bogus=1"]) == "unrecognized arguments: --bogus")
        #expect(failure(["-c", "c", "-x"]) == "unrecognized arguments: -x")
        #expect(failure(["-c", "c", "-Kx"]) == "unrecognized arguments: -x")
        #expect(failure(["-c", "c", "--"])  == nil)
        #expect(failure(["--vm-names", "a"])?.contains("--vm-names belongs to a generation") == true)
        #expect(failure(["--dump-vsocks", "2"])?.contains("--dump-vsocks") == true)
        #expect(failure(["-c"]) == "argument -c/--config: expected one argument")
        #expect(failure(["-c", "-K"]) == "argument -c/--config: expected one argument")
        #expect(failure(["-c", "c", "--log-level", "loud"])?.hasPrefix("argument --log-level: invalid choice: 'loud'") == true)
        #expect(failure(["-c", "c"], ["logLevel": "loud"])?.hasPrefix("$logLevel: invalid choice") == true)
        #expect(failure(["-c", "c", "--global-timeout", "soon"])?.hasPrefix("argument --global-timeout: invalid value: 'soon'") == true)
        #expect(failure(["t.py"], ["globalTimeout": "x"])?.hasPrefix("argument --global-timeout: invalid value: 'x'") == true)
        #expect(failure(["--vlans", "1", "t.py"])?.hasPrefix("argument --vlans: invalid VLAN number: 't.py'") == true)
        #expect(failure(["-c", "c", "-K=yes"])?.contains("ignored explicit argument 'yes'") == true)
        #expect(failure(["-c", "c", "--interactive=yes"])?.contains("ignored explicit argument 'yes'") == true)
        #expect(failure(["a.py", "b.py"]) == "unrecognized arguments: b.py")
        #expect(failure([])?.hasPrefix("the following arguments are required: -c/--config") == true)
        #expect(failure([], ["testScript": ""])?.hasPrefix("the following arguments are required") == true)
    }

    /// Among the long names of both generations only the two keep spellings
    /// (one meaning) and the two output spellings (one option) share a first
    /// letter, so no prefix is ambiguous; `--` alone ends the options.
    @Test func prefixResolution() throws {
        #expect(try Args.resolveLong("--keep") == .keepMachineState)
        #expect(try Args.resolveLong("--keep-vm") == .keepVmState)
        #expect(try Args.resolveLong("--output") == .outputDirectory)
        #expect(try Args.resolveLong("--g") == .globalTimeout)
        #expect(resolveFailure("--x") == "unrecognized arguments: --x")
        #expect(resolveFailure("--configs") == "unrecognized arguments: --configs")
        for (name, _) in Args.longOptions {
            for length in 3...name.count {
                #expect(throws: Never.self, "\(name.prefix(length))") { try Args.resolveLong(String(name.prefix(length))) }
            }
        }
        #expect(try parse(["-c", "c", "--", ]).config == "c")
    }

    @Test func theGenerationsDoNotMix() {
        #expect(failure(["-c", "c.json", "--start-scripts", "run-a-vm"])?.hasPrefix("argument --start-scripts: not allowed with -c/--config") == true)
        #expect(failure(["-c", "c.json", "--vlans", "1"])?.hasPrefix("argument --vlans: not allowed with -c/--config") == true)
        #expect(failure(["-c", "c.json", "t.py"])?.hasPrefix("unrecognized arguments: t.py") == true)
        // --global-timeout is the one older flag the current form keeps (it overrides the file).
        #expect(failure(["-c", "c.json", "--global-timeout", "10"]) == nil)
    }

    @Test func olderFormBecomesADriverConfiguration() throws {
        let a = try parse(["--start-scripts", "/s/run-web-vm", "bin/run-db-vm", "--vlans", "1", "--global-timeout", "300", "t.py"])
        let json = try a.driverConfiguration(workingDirectory: "/work")
        let vms = json["vms"] as? [String: [String: String]]
        #expect(vms == ["web": ["name": "web", "start_script": "/s/run-web-vm"], "db": ["name": "db", "start_script": "/work/bin/run-db-vm"]])
        #expect(json["vlans"] as? [Int] == [1])
        #expect(json["global_timeout"] as? Double == 300)
        #expect(json["test_script"] as? String == "/work/t.py")
        // What NixpkgsConfig reads back: the machines, named as nixpkgs names them.
        let data = try JSONSerialization.data(withJSONObject: json)
        let config = try NixpkgsConfig.parse(try JSONValue.parse(Array(data)))
        #expect(config.spec.machines.map(\.name).sorted() == ["db", "web"])
        #expect(config.spec.globalTimeout == 300)
        #expect(config.vlans == [1])
        #expect(config.testScript == "/work/t.py")
        let twice = try parse(["t.py", "--start-scripts", "/a/run-x-vm", "/b/run-x-vm"])
        #expect(throws: VouchError.self) { try twice.driverConfiguration(workingDirectory: "/") }
    }

    @Test func junitIsRelativeToTheOutputDirectory() throws {
        #expect(try parse(["-c", "c", "--junit-xml", "r.xml"]).junitPath(outputDirectory: "/out") == "/out/r.xml")
        #expect(try parse(["-c", "c", "--junit-xml", "/tmp/r.xml"]).junitPath(outputDirectory: "/out") == "/tmp/r.xml")
        #expect(try parse(["-c", "c"]).junitPath(outputDirectory: "/out") == nil)
    }
}
