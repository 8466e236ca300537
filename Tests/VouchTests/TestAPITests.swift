import Foundation
import FoundationXML
import Synchronization
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

struct Flaky: Error, CustomStringConvertible {
    let attempt: Int
    var description: String { "flaky attempt \(attempt)" }
}

@Suite struct RetryAndAssertTests {
    @Test func retryAttemptsUntilSuccess() async throws {
        let calls = Counter()
        let value = try await retry(attempts: 5, delay: 0.01) { () async throws -> String in
            calls.increment()
            if calls.count < 3 { throw Flaky(attempt: calls.count) }
            return "done"
        }
        #expect(value == "done")
        #expect(calls.count == 3)
    }

    @Test func retryGivesUpWithTheLastError() async throws {
        let calls = Counter()
        let error = await #expect(throws: VouchError.self) {
            try await retry(attempts: 4, delay: 0.01) { () async throws -> Void in
                calls.increment()
                throw Flaky(attempt: calls.count)
            }
        }
        #expect(calls.count == 4)
        #expect((error?.cause as? Flaky)?.attempt == 4, "the last attempt's error is kept as the cause")
        do {
            try await retry(attempts: 2, delay: 0) { () async throws -> Void in throw Flaky(attempt: 99) }
        } catch {
            #expect((error.cause as? Flaky)?.attempt == 99)
        }
    }

    @Test func retryWaitsTheDelay() async throws {
        let seconds = await elapsed {
            _ = try? await retry(attempts: 3, delay: 0.2) { () async throws -> Void in throw Flaky(attempt: 0) }
        }
        #expect(seconds >= 0.4)
        #expect(seconds < 3)
    }

    @Test func retryWithTimeout() async throws {
        let calls = Counter()
        let value = try await retry(timeout: 10) { () async throws -> Int in
            calls.increment()
            if calls.count < 3 { throw Flaky(attempt: calls.count) }
            return calls.count
        }
        #expect(value == 3)

        var error: VouchError?
        let seconds = await elapsed {
            error = await expectVouchError(.timeout) {
                try await retry(timeout: 0.5) { () async throws -> Void in throw Flaky(attempt: 7) }
            }
        }
        #expect(error?.message.contains("retry gave up after 0.5 s; last error: flaky attempt 7") == true, "\(String(describing: error))")
        #expect((error?.cause as? VouchError)?.cause is Flaky, "the last error is kept as the cause")
        #expect(error?.location?.file.hasSuffix("TestAPITests.swift") == true)
        #expect(seconds >= 0.5 && seconds < 3)
    }

    @Test func retryDoesNotRetryCancellation() async {
        let calls = Counter()
        let error = await #expect(throws: VouchError.self) {
            try await retry(attempts: 5, delay: 0) { () async throws -> Void in
                calls.increment()
                throw CancellationError()
            }
        }
        #expect(error?.kind == .cancelled)
        #expect(calls.count == 1)
    }

    @Test func assertContainsAndMatches() throws {
        try assertContains("hello world", "o w")
        try assertMatches("nginx listening on 0.0.0.0:80", #"listening on [0-9.]+:\d+"#)
        let e1 = #expect(throws: VouchError.self) { try assertContains("abc\ndef", "xyz") }
        #expect(e1?.kind == .assertionFailed)
        #expect(e1?.message == "expected the text to contain \"xyz\"")
        #expect(e1?.outputTail == "abc\ndef")
        #expect(e1?.location?.file.hasSuffix("TestAPITests.swift") == true)
        let e2 = #expect(throws: VouchError.self) { try assertMatches("abc", "^b") }
        #expect(e2?.kind == .assertionFailed)
        #expect(e2?.message == "expected the text to match /^b/")
        let e3 = #expect(throws: VouchError.self) { try assertMatches("abc", "([") }
        #expect(e3?.kind == .invalidSpec)
        try assertEqual(2 + 2, 4)
        let e4 = #expect(throws: VouchError.self) { try assertEqual("a", "b") }
        #expect(e4?.message == "expected b, got a")
        try assertTrue(true)
        let e5 = #expect(throws: VouchError.self) { try assertTrue(false, "custom message") }
        #expect(e5?.message == "custom message")
    }

    @Test func unittestLikeAssertions() async throws {
        try assertFalse(false)
        let e1 = #expect(throws: VouchError.self) { try assertFalse(true, "was true") }
        #expect(e1?.message == "was true")
        try assertNotEqual(1, 2)
        let e2 = #expect(throws: VouchError.self) { try assertNotEqual("x", "x") }
        #expect(e2?.message == "expected anything but x")
        let thrown = try await assertThrows { throw VouchError(.timeout, "slow") }
        #expect(thrown.kind == .timeout)
        let e3 = await #expect(throws: VouchError.self) { try await assertThrows { 42 } }
        #expect(e3?.message == "expected an error, got 42")
        #expect(e3?.kind == .assertionFailed)
    }

    @Test func subtestWithoutADriverRunsAndRethrows() async throws {
        #expect(Driver.current == nil)
        let value = try await subtest("outside a run") { 42 }
        #expect(value == 42)
        let failing = await #expect(throws: VouchError.self) { try await subtest("failing") { throw Flaky(attempt: 1) } }
        #expect(failing?.cause is Flaky && failing?.message == "subtest failing failed")
        let error = await expectVouchError(.other) { try await startAll() }
        #expect(error?.message.contains("outside a test run") == true)
    }

    @Test func variableNames() {
        #expect(NodeNames.variableName(for: "web-server.1") == "web_server_1")
        #expect(NodeNames.variableName(for: "plain_name2") == "plain_name2")
        #expect(NodeNames.variableName(for: "1st-node") == "_st_node")
        #expect(shellQuote("it's") == "'it'\\''s'")
    }
}

/// `Driver` with a spec that names a start script: `Driver.init` validates
/// and prepares without booting, and a script that never touches a machine
/// exercises `run`, subtests, the JUnit file and teardown without QEMU.
@Suite struct DriverTests {
    func makeDriver(globalTimeout: Double? = nil) throws -> (Driver, String) {
        let dir = makeTempDirectory()
        var q = QEMUSettings()
        q.startScript = "/bin/true"
        let m = MachineSpec(name: "machine", qemu: q)
        var options = RunOptions(outputDirectory: URL(fileURLWithPath: dir + "/out"))
        options.quiet = true
        options.junitXML = URL(fileURLWithPath: dir + "/report.xml")
        options.globalTimeout = globalTimeout
        return (try Driver(spec: TestSpec(name: "unit-suite", machines: [m]), options: options), dir)
    }

    @Test func subtestsBecomeJUnitCases() async throws {
        let (driver, dir) = try makeDriver()
        defer { removeTree(dir) }
        #expect(driver.machines.map(\.name) == ["machine"])
        #expect(try driver.machine("machine").readyUnit == nil)
        let lookup = #expect(throws: VouchError.self) { try driver.machine("nope") }
        #expect(lookup?.message.contains("no machine named 'nope' (machines: machine)") == true)

        let outcome = await driver.run { _ in
            #expect(Driver.current != nil)
            try await subtest("passes") { try assertContains("abc", "b") }
            try? await subtest("fails but is caught") { try assertContains("abc", "z") }
            try await subtest("fails the run") { throw VouchError(.assertionFailed, "boom <here>") }
        }
        #expect(outcome == .failed("boom <here>"))
        #expect(outcome.exitStatus == 1)
        let cases = driver.junit.all
        #expect(cases.map(\.name) == ["passes", "fails but is caught", "fails the run"])
        #expect(cases[0].failure == nil)
        #expect(cases[1].failure?.contains("expected the text to contain \"z\"") == true)
        #expect(cases[2].failure == "boom <here>")

        for path in [dir + "/report.xml", dir + "/out/junit.xml"] {
            let doc = try XMLDocument(contentsOf: URL(fileURLWithPath: path))
            let suite = try #require(try doc.nodes(forXPath: "//testsuite").first as? XMLElement)
            #expect(suite.attribute(forName: "name")?.stringValue == "unit-suite")
            #expect(suite.attribute(forName: "tests")?.stringValue == "3")
            #expect(suite.attribute(forName: "failures")?.stringValue == "2")
        }
        let log = try String(contentsOfFile: dir + "/out/vouch.log", encoding: .utf8)
        #expect(log.contains("subtest: passes"))
        #expect(log.contains("test failed"))
        #expect(!FileManager.default.fileExists(atPath: driver.runDirectory), "teardown removes the run directory")
    }

    @Test func passingRunWithoutSubtestsRecordsOneCase() async throws {
        let (driver, dir) = try makeDriver()
        defer { removeTree(dir) }
        let outcome = await driver.run { _ in }
        #expect(outcome == .passed)
        #expect(outcome.exitStatus == 0)
        #expect(driver.junit.all.map(\.name) == ["unit-suite"])
        #expect(driver.junit.all.first?.failure == nil)
    }

    @Test func globalTimeoutEndsTheRunWith143() async throws {
        let (driver, dir) = try makeDriver(globalTimeout: 0.3)
        defer { removeTree(dir) }
        var outcome: RunOutcome?
        let seconds = await elapsed {
            outcome = await driver.run { _ in try await Task.sleep(for: .seconds(30)) }
        }
        #expect(outcome == .timedOut)
        #expect(outcome?.exitStatus == 143)
        #expect(seconds < 5)
        #expect(driver.junit.all.first?.failure?.contains("global timeout") == true)
        let log = try String(contentsOfFile: dir + "/out/vouch.log", encoding: .utf8)
        #expect(log.contains("timeout reached; test terminating..."))
    }

    @Test func invalidSpecIsRejectedBeforeAnythingStarts() throws {
        var q = QEMUSettings()
        q.startScript = "/nonexistent/run-m-vm"
        let m = MachineSpec(name: "m", qemu: q)
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        var options = RunOptions(outputDirectory: URL(fileURLWithPath: dir + "/out"))
        options.quiet = true
        let error = #expect(throws: VouchError.self) { try Driver(spec: TestSpec(name: "t", machines: [m]), options: options) }
        #expect(error?.kind == .missingImage)
        #expect(error?.machine == "m")
        #expect(error?.message.contains("/nonexistent/run-m-vm") == true)
        struct LXC: BackendSettings { static let backend = "lxc" }
        let unknown = MachineSpec(name: "u", settings: LXC())
        let e2 = #expect(throws: VouchError.self) { try Driver(spec: TestSpec(name: "t", machines: [unknown]), options: options) }
        #expect(e2?.kind == .invalidSpec)
        #expect(e2?.message.contains("unknown backend 'lxc'") == true)
    }
}
