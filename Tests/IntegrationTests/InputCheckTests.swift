import Foundation
import Glibc
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// Everything a spec check can know is checked by `vouch check` (and by
/// `vouch run` before anything boots): each mistake is exit status 2, a
/// message naming it, and nothing started.
@Suite(.serialized)
final class InputCheckTests: ScratchSuite {
    init() throws { try super.init(prefix: "vouch-inputs") }

    @Test func badNamesAreRefusedByCheckAndRun() async throws {
        let long = String(repeating: "n", count: 300)
        let py = try write("t.py", "start_all()\n")
        let swift = try write("t.swift", "try await startAll()\n")
        let cases: [(json: String, script: String?, expected: String)] = [
            (#"{"machines": {"\#(long)": {}}}"#, nil, "has 300 characters; at most 63 (it is a host name)"),
            (#"{"machines": {"a-b": {}, "a_b": {}}}"#, nil, "machines 'a-b' and 'a_b' would both be the script variable `a_b`: rename one"),
            (#"{"machines": {"сервер": {}}}"#, nil, "contains 'с'; names may only contain ASCII letters (a-z, A-Z), digits (0-9), '-' and '_'"),
            (#"{"machines": {"class": {}}}"#, py, "machine 'class': `class` is a Python keyword, so a Python test script cannot name it"),
            (#"{"machines": {"driver": {}}}"#, swift, "machine 'driver': a Swift test script already has a global `driver`"),
        ]
        let before = runDirectories()
        for (i, c) in cases.enumerated() {
            let spec = try write("names\(i).json", c.json)
            for command in ["check", "run"] {
                var args = [command, spec]
                if let script = c.script { args += ["--script", script] }
                if command == "run" { args += ["-o", dir.appendingPathComponent("out-\(i)").path] }
                let (status, output) = try await runCLI(args)
                #expect(status == 2, "\(command) \(c.json.prefix(60)): status \(status): \(output)")
                #expect(output.contains(c.expected), "\(command) \(c.json.prefix(60)): \(output)")
            }
        }
        #expect(runDirectories() == before, "nothing may start")
        #expect(processes(mentioning: dir.path).isEmpty)
    }

    /// A Swift keyword is fine as a node name: scripts write it in backticks.
    @Test func swiftKeywordNodeWorksInBackticks() async throws {
        let spec = try write("class.json", #"{"machines": {"class": {"image": "minimal"}}}"#)
        let script = try write("class.swift", "try await `class`.succeed(\"true\")\nprint(\"KEYWORD-NODE-OK\")\n")
        let (status, output) = try await runCLI(["run", spec, "--script", script, "-o", dir.appendingPathComponent("out-class").path])
        #expect(status == 0, "\(output)")
        #expect(output.contains("KEYWORD-NODE-OK"), "\(output)")
    }

    /// Two runs given one output directory: the second is refused naming the
    /// first, which goes on intact.
    @Test func twoRunsOnOneOutputDirectory() async throws {
        let spec = try write("one.json", #"{"machines": {"m": {"image": "minimal"}}}"#)
        let script = try write("slow.py", "m.succeed('true')\nm.sleep(5)\n")
        let out = dir.appendingPathComponent("shared-out")
        let first = try ChildProcess(vouchBinary, ["run", spec, "--script", script, "-o", out.path])
        let output = OutputCollector()
        let drains = [first.stdout!, first.stderr!].map { reader in Task { await output.drain(reader.queue) } }
        try await within(seconds: 60) {
            while !output.text.contains("connected to the guest root shell") { try await Task.sleep(for: .milliseconds(100)) }
        }
        let (status, second) = try await runCLI(["run", spec, "-o", out.path])
        #expect(status == 2, "\(second)")
        #expect(second.contains("output directory \(out.path) is in use by another vouch run (pid \(first.pid))"), "\(second)")
        let firstStatus = try await within(seconds: 120) { try await first.waitForExit() }
        for drain in drains { await drain.value }
        #expect(firstStatus == .exited(0), "\(output.text.suffix(2000))")
        let log = try String(contentsOf: out.appendingPathComponent("vouch.log"), encoding: .utf8)
        #expect(log.contains("test passed"))
        let junit = try String(contentsOf: out.appendingPathComponent("junit.xml"), encoding: .utf8)
        #expect(junit.contains(#"failures="0""#))
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent(".vouch.lock").path), "the lock goes with the run")
        // Once the first is done, the directory is free again.
        let (again, text) = try await runCLI(["check", spec])
        #expect(again == 0, "\(text)")
    }

    @Test func waitForUnitOnAMissingUnitSaysSo() async throws {
        var settings = NspawnSettings()
        settings.image = "systemd"
        var ct = MachineSpec(name: "ct", nspawn: settings)
        ct.vlans = []
        let run = try await RealRun.run([ct]) { d in
            let error = await #expect(throws: VouchError.self) { try await d.machine("ct").waitForUnit("no-such-thing.service", timeout: 60) }
            #expect(error?.kind == .unitFailed)
            #expect(error?.message.hasPrefix(#"unit "no-such-thing.service" is inactive and there are no pending jobs"#) == true, "\(String(describing: error))")
            #expect(error?.message.contains(#"unit "no-such-thing.service" does not exist"#) == true, "\(String(describing: error))")
        }
        #expect(run.outcome == .passed)
    }
}
