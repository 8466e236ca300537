import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The Python bridge's one table: Vouch checks requests against it, and the
/// Python package is checked against the same table (its own selfcheck).
@Suite struct BridgeTableTests {
    @Test func everyCallHasAHandlerButTheProtocolOnes() {
        let protocolCalls: Set = ["begin_section", "end_section", "script_failed"]
        for (name, call) in BridgeTable.calls {
            #expect((call.perform == nil) == protocolCalls.contains(name), "\(name)")
        }
        #expect(BridgeTable.calls.count > 40)
        #expect(Set(BridgeTable.exceptionClasses.keys) == Set(VouchError.Kind.allCases.map(\.rawValue)))
    }

    @Test func requestsAreCheckedAgainstTheTable() throws {
        let port = try #require(BridgeTable.calls["wait_for_open_port"])
        let missing = #expect(throws: VouchError.self) { _ = try port.validate(["addr": "localhost", "timeout": .null]) }
        #expect(missing?.message == "wait_for_open_port: missing argument 'port'")
        let wrong = #expect(throws: VouchError.self) { _ = try port.validate(["port": "80", "addr": "localhost", "timeout": 5]) }
        #expect(wrong?.message.contains("argument 'port' must be a integer") == true)
        let unknown = #expect(throws: VouchError.self) { _ = try port.validate(["port": 80, "addr": "x", "timeout": 5, "retries": 3]) }
        #expect(unknown?.message.contains("unknown argument 'retries'") == true)
        let notNull = #expect(throws: VouchError.self) { _ = try port.validate(["port": .null, "addr": "x", "timeout": 5]) }
        #expect(notNull?.message.contains("argument 'port' cannot be None") == true)
        let fine = try port.validate(["port": 80, "addr": "localhost", "timeout": .null])
        #expect(fine.int("port") == 80 && fine.timeout == BridgeArguments.unlimited)

        let forward = try #require(BridgeTable.calls["forward_port"])
        #expect(throws: VouchError.self) { _ = try forward.validate(["host_port": 8080]) }
        #expect(try forward.validate(["host_port": .null, "guest_port": 22]).optionalInt("host_port") == nil)
    }

    @Test func unknownCallsAndWrongScopesAreRefused() throws {
        let unknown = #expect(throws: VouchError.self) {
            _ = try BridgeTable.lookup(BridgeRequest(id: 1, call: "switch_root", machine: "m", args: [:]))
        }
        #expect(unknown?.kind == .unsupported && unknown?.message == "not supported yet by Vouch: switch_root")
        let scope = #expect(throws: VouchError.self) {
            _ = try BridgeTable.lookup(BridgeRequest(id: 1, call: "start_all", machine: "m", args: [:]))
        }
        #expect(scope?.kind == .protocolError)
    }

    /// The Python side sends every call as the table says, and makes every call the table has.
    @Test func pythonPackageMatchesTheTable() async throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let table = dir + "/table.json"
        try Data(BridgeTable.json.description.utf8).write(to: URL(fileURLWithPath: table))
        let package = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("python").path
        var env = ProcessInfo.processInfo.environment
        env["PYTHONPATH"] = package
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        let (status, output) = try await ChildProcess.run("python3", ["-m", "vouch_driver.selfcheck", table], environment: env, timeout: 60)
        #expect(status == .exited(0), "\(output)")
        #expect(output.contains("all sent as the table says"), "\(output)")

        // The check can fail: a table with a call Python never makes, one
        // whose argument Python does not send, one it sends too much to, and
        // without a message text Python fills in.
        guard case .object(var top) = BridgeTable.json, case .object(var calls)? = top["calls"],
              case .object(var messages)? = top["messages"] else { Issue.record("table shape"); return }
        messages["retryBothTimeouts"] = nil
        top["messages"] = .object(messages)
        calls["reticulate_splines"] = ["scope": "machine", "args": [:]]
        calls["wait_for_file"] = ["scope": "machine", "args": ["path": ["type": "string", "nullable": false],
                                                               "timeout": ["type": "number", "nullable": true],
                                                               "poll_interval": ["type": "number", "nullable": false]]]
        calls["block"] = ["scope": "driver", "args": [:]]
        top["calls"] = .object(calls)
        try Data(JSONValue.object(top).description.utf8).write(to: URL(fileURLWithPath: table))
        let (bad, complaints) = try await ChildProcess.run("python3", ["-m", "vouch_driver.selfcheck", table], environment: env, timeout: 60)
        #expect(bad == .exited(1), "\(complaints)")
        #expect(complaints.contains("no method makes the table's call 'reticulate_splines'"), "\(complaints)")
        #expect(complaints.contains("wait_for_file: missing argument 'poll_interval'"), "\(complaints)")
        #expect(complaints.contains("block is a driver call"), "\(complaints)")
        #expect(complaints.contains("symbols.py: message 'retryBothTimeouts' is not in the table's messages"), "\(complaints)")
    }
}
