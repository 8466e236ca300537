import Foundation
import Glibc
import VouchGuest
import VouchSupport

/// One argument of a bridge call.
struct BridgeArgument: Sendable {
    /// The JSON type it must have.
    enum Kind: String, Sendable {
        /// `json`: any JSON value (QMP arguments).
        case string, number, integer, bool, strings, json
    }

    let name: String
    let kind: Kind
    /// Whether it may be null (None), with the meaning the call documents
    /// (for timeouts: no limit). Every argument must be sent by name.
    let nullable: Bool

    static func string(_ name: String, nullable: Bool = false) -> BridgeArgument { .init(name: name, kind: .string, nullable: nullable) }
    static func number(_ name: String, nullable: Bool = false) -> BridgeArgument { .init(name: name, kind: .number, nullable: nullable) }
    static func integer(_ name: String, nullable: Bool = false) -> BridgeArgument { .init(name: name, kind: .integer, nullable: nullable) }
    static func bool(_ name: String) -> BridgeArgument { .init(name: name, kind: .bool, nullable: false) }
    static func strings(_ name: String) -> BridgeArgument { .init(name: name, kind: .strings, nullable: false) }
    static func json(_ name: String) -> BridgeArgument { .init(name: name, kind: .json, nullable: true) }
    /// A timeout in seconds; null means none (Vouch waits have a deadline all the same: `BridgeArguments.unlimited`).
    static func timeout() -> BridgeArgument { .init(name: "timeout", kind: .number, nullable: true) }
}

/// One call the Python side may make, and what Vouch does for it.
struct BridgeCall: Sendable {
    /// Whether the call is about one machine (`"machine"` in the request) or the run.
    enum Scope: String, Sendable { case machine, driver }

    let name: String
    let scope: Scope
    let arguments: [BridgeArgument]
    /// Performs the call; nil for the calls the serve loop itself handles
    /// (sections, the script's failure report).
    let perform: (@Sendable (BridgeContext, BridgeArguments) async throws(VouchError) -> JSONValue)?

    /// Checks a request's arguments against this call: every argument sent,
    /// of its type, none unknown.
    /// - Throws: `.invalidSpec` naming the argument.
    func validate(_ values: [String: JSONValue]) throws(VouchError) -> BridgeArguments {
        let known = Set(arguments.map(\.name))
        if let unknown = values.keys.sorted().first(where: { !known.contains($0) }) {
            throw VouchError(.invalidSpec, "\(name): unknown argument '\(unknown)' (arguments: \(arguments.map(\.name).joined(separator: ", ")))")
        }
        for argument in arguments {
            guard let value = values[argument.name] else {
                throw VouchError(.invalidSpec, "\(name): missing argument '\(argument.name)'")
            }
            if value == .null {
                guard argument.nullable else { throw VouchError(.invalidSpec, "\(name): argument '\(argument.name)' cannot be None") }
                continue
            }
            let fits: Bool = switch argument.kind {
            case .string: value.stringValue != nil
            case .number: { if case .number = value { true } else { false } }()
            case .integer: value.intValue != nil
            case .bool: value.boolValue != nil
            case .strings: value.arrayValue?.allSatisfy { $0.stringValue != nil } == true
            case .json: true
            }
            guard fits else {
                throw VouchError(.invalidSpec, "\(name): argument '\(argument.name)' must be \(argument.kind == .strings ? "a list of strings" : "a \(argument.kind.rawValue)"), got \(value)")
            }
        }
        return BridgeArguments(values)
    }
}

/// What a call's handler works with.
struct BridgeContext: Sendable {
    let server: BridgeServer
    let machine: Machine?
    let location: SourceLocation

    var driver: Driver { server.driver }

    /// The machine the request names.
    func target() throws(VouchError) -> Machine {
        guard let machine else { throw VouchError(.protocolError, "this call needs a machine") }
        return machine
    }
}

/// The calls between the Python layer and Vouch, in one place: the Python
/// side receives this table (`hello`) and checks every request against it
/// before sending; Vouch checks again, and dispatches from it. The call
/// names, argument names and error kinds exist nowhere else.
enum BridgeTable {
    /// The Python exception class for each error kind (nixpkgs' classes where it has them).
    static let exceptionClasses: [String: String] = {
        var classes: [String: String] = [:]
        for kind in VouchError.Kind.allCases {
            classes[kind.rawValue] = switch kind {
            case .commandFailed, .commandSucceeded, .timeout, .unitFailed, .assertionFailed: "RequestedAssertionFailed"
            case .unsupported: "NotSupportedByVouch"
            case .cancelled: "KeyboardInterrupt"
            case .machineDown, .bootFailed, .qmpError, .apiError, .protocolError: "MachineError"
            case .spawnFailed, .invalidSpec, .missingImage, .other: "VouchError"
            }
        }
        return classes
    }()

    /// Every call, by name.
    static let calls: [String: BridgeCall] = Dictionary(uniqueKeysWithValues: (machineCalls + driverCalls).map { ($0.name, $0) })

    /// The table as the Python side receives it.
    static var json: JSONValue {
        .object([
            "calls": .object(calls.mapValues { call in
                .object([
                    "scope": .string(call.scope.rawValue),
                    "args": .object(Dictionary(uniqueKeysWithValues: call.arguments.map {
                        ($0.name, JSONValue.object(["type": .string($0.kind.rawValue), "nullable": .bool($0.nullable)]))
                    })),
                ])
            }),
            "errors": .object(exceptionClasses.mapValues { .string($0) }),
            "messages": .object(Dictionary(uniqueKeysWithValues: NixpkgsMessage.allCases.map { ($0.key, .string($0.rawValue)) })),
        ])
    }

    /// What the Python side needs to know of a machine to build its object.
    static func describe(_ machine: Machine) -> JSONValue {
        [
            "name": .string(machine.name),
            "backend": .string(machine.backendName),
            "stateDirectory": .string(machine.context.stateDirectory),
            "sharedDirectory": .string(machine.context.sharedDirectory),
        ]
    }

    private static func machine(
        _ name: String, _ arguments: [BridgeArgument] = [],
        _ perform: @escaping @Sendable (Machine, BridgeArguments, SourceLocation) async throws(VouchError) -> JSONValue
    ) -> BridgeCall {
        BridgeCall(name: name, scope: .machine, arguments: arguments) { context, a throws(VouchError) in
            try await perform(try context.target(), a, context.location)
        }
    }

    private static func driver(
        _ name: String, _ arguments: [BridgeArgument] = [],
        _ perform: (@Sendable (BridgeContext, BridgeArguments) async throws(VouchError) -> JSONValue)?
    ) -> BridgeCall {
        BridgeCall(name: name, scope: .driver, arguments: arguments, perform: perform)
    }

    private static let machineCalls: [BridgeCall] = [
        machine("booted") { m, _, _ in .bool(await m.booted) },
        machine("is_up") { m, _, _ in .bool(await m.isUp()) },
        machine("start", [.bool("allow_reboot")]) { m, a, _ throws(VouchError) in
            try await m.start(allowReboot: a.bool("allow_reboot"))
            return .null
        },
        machine("shutdown") { m, _, _ throws(VouchError) in try await m.shutdown(); return .null },
        machine("crash") { m, _, _ throws(VouchError) in try await m.crash(); return .null },
        machine("reboot") { m, _, _ throws(VouchError) in try await m.reboot(); return .null },
        machine("wait_for_shutdown", [.timeout()]) { m, a, _ throws(VouchError) in try await m.waitForShutdown(timeout: a.timeout); return .null },
        machine("execute", [.string("command"), .timeout(), .bool("tolerate_loss")]) { m, a, at throws(VouchError) in
            do throws(VouchError) {
                let r = try await m.execute(a.string("command"), timeout: a.timeout, file: at.file, line: at.line)
                return [.number(Double(r.status)), .string(r.text)]
            } catch where error.kind == .machineDown && a.bool("tolerate_loss") {
                return [.number(-1), .string("")]
            }
        },
        machine("succeed", [.strings("commands"), .timeout()]) { m, a, at throws(VouchError) in
            var output = ""
            for command in a.strings("commands") { output += try await m.succeed(command, timeout: a.timeout, file: at.file, line: at.line) }
            return .string(output)
        },
        machine("fail", [.strings("commands"), .timeout()]) { m, a, at throws(VouchError) in
            var output = ""
            for command in a.strings("commands") { output += try await m.fail(command, timeout: a.timeout, file: at.file, line: at.line) }
            return .string(output)
        },
        machine("wait_until_succeeds", [.string("command"), .timeout(), .number("attempt_timeout", nullable: true)]) { m, a, at throws(VouchError) in
            .string(try await m.waitUntilSucceeds(a.string("command"), timeout: a.timeout, attemptTimeout: a.optionalNumber("attempt_timeout"),
                                                  file: at.file, line: at.line))
        },
        machine("wait_until_fails", [.string("command"), .timeout(), .number("attempt_timeout", nullable: true)]) { m, a, at throws(VouchError) in
            .string(try await m.waitUntilFails(a.string("command"), timeout: a.timeout, attemptTimeout: a.optionalNumber("attempt_timeout"),
                                               file: at.file, line: at.line))
        },
        machine("sleep", [.number("seconds")]) { m, a, _ throws(VouchError) in try await m.sleep(a.number("seconds")); return .null },
        machine("wait_for_unit", [.string("unit"), .string("user", nullable: true), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForUnit(a.string("unit"), user: a.optionalString("user"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_file", [.string("path"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForFile(a.string("path"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_open_port", [.integer("port"), .string("addr"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForOpenPort(a.int("port"), address: a.string("addr"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_closed_port", [.integer("port"), .string("addr"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForClosedPort(a.int("port"), address: a.string("addr"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_open_unix_socket", [.string("path"), .bool("is_datagram"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForOpenUnixSocket(a.string("path"), isDatagram: a.bool("is_datagram"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_console_text", [.string("regex"), .timeout()]) { m, a, at throws(VouchError) in
            .string(try await m.waitForConsoleText(a.string("regex"), timeout: a.timeout, file: at.file, line: at.line))
        },
        machine("get_console_log") { m, _, _ in .string(await m.getConsoleLog()) },
        machine("systemctl", [.string("query"), .string("user", nullable: true)]) { m, a, at throws(VouchError) in
            let r = try await m.systemctl(a.string("query"), user: a.optionalString("user"), file: at.file, line: at.line)
            return [.number(Double(r.status)), .string(r.text)]
        },
        machine("start_job", [.string("unit"), .string("user", nullable: true)]) { m, a, at throws(VouchError) in
            let r = try await m.startJob(a.string("unit"), user: a.optionalString("user"), file: at.file, line: at.line)
            return [.number(Double(r.status)), .string(r.text)]
        },
        machine("stop_job", [.string("unit"), .string("user", nullable: true)]) { m, a, at throws(VouchError) in
            let r = try await m.stopJob(a.string("unit"), user: a.optionalString("user"), file: at.file, line: at.line)
            return [.number(Double(r.status)), .string(r.text)]
        },
        machine("get_unit_info", [.string("unit"), .string("user", nullable: true)]) { m, a, at throws(VouchError) in
            let info = try await m.getUnitInfo(a.string("unit"), user: a.optionalString("user"), file: at.file, line: at.line)
            return .object(info.mapValues { .string($0) })
        },
        machine("get_unit_property", [.string("unit"), .string("property"), .string("user", nullable: true)]) { m, a, at throws(VouchError) in
            .string(try await m.getUnitProperty(a.string("unit"), a.string("property"), user: a.optionalString("user"), file: at.file, line: at.line))
        },
        machine("wait_for_unit_active_state", [.string("unit"), .string("state"), .string("user", nullable: true), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForUnitActiveState(a.string("unit"), a.string("state"), user: a.optionalString("user"), timeout: a.timeout,
                                               file: at.file, line: at.line)
            return .null
        },
        machine("require_unit_state", [.string("unit"), .string("state")]) { m, a, at throws(VouchError) in
            try await m.requireUnitState(a.string("unit"), a.string("state"), file: at.file, line: at.line)
            return .null
        },
        machine("copy_from_host", [.string("source"), .string("target")]) { m, a, at throws(VouchError) in
            try await m.copyFromHost(a.string("source"), to: a.string("target"), file: at.file, line: at.line)
            return .null
        },
        machine("copy_from_machine", [.string("source"), .string("target_dir")]) { m, a, at throws(VouchError) in
            .string(try await m.copyFromMachine(a.string("source"), to: a.string("target_dir"), file: at.file, line: at.line).path)
        },
        machine("block") { m, _, _ throws(VouchError) in try await m.block(); return .null },
        machine("unblock") { m, _, _ throws(VouchError) in try await m.unblock(); return .null },
        // A null host port lets Vouch pick a free one.
        machine("forward_port", [.integer("host_port", nullable: true), .integer("guest_port")]) { m, a, _ throws(VouchError) in
            .number(Double(try await m.forwardPort(host: a.optionalInt("host_port"), guest: a.int("guest_port"))))
        },
        machine("send_key", [.string("key"), .number("delay")]) { m, a, at throws(VouchError) in
            try await m.sendKey(a.string("key"), delay: a.number("delay"), file: at.file, line: at.line)
            return .null
        },
        machine("send_chars", [.string("chars"), .number("delay")]) { m, a, at throws(VouchError) in
            try await m.sendChars(a.string("chars"), delay: a.number("delay"), file: at.file, line: at.line)
            return .null
        },
        machine("console_read", [.integer("offset")]) { m, a, _ in
            let (lines, partial, end) = await m.consoleOutput(from: a.int("offset"))
            return [.string(lines), .string(partial), .number(Double(end))]
        },
        machine("send_console", [.string("chars")]) { m, a, at throws(VouchError) in
            try await m.sendConsole(a.string("chars"), file: at.file, line: at.line)
            return .null
        },
        // The Python side resolves the name as nixpkgs does and sends a path.
        machine("screenshot", [.string("path")]) { m, a, at throws(VouchError) in
            .string(try await m.screenshot(a.string("path"), file: at.file, line: at.line).path)
        },
        machine("get_screen_text") { m, _, at throws(VouchError) in
            .string(try await m.screenText(file: at.file, line: at.line))
        },
        machine("get_screen_text_variants") { m, _, at throws(VouchError) in
            .array(try await m.screenTextVariants(file: at.file, line: at.line).map { .string($0) })
        },
        machine("wait_for_text", [.string("regex"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForText(a.string("regex"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("get_tty_text", [.integer("tty")]) { m, a, at throws(VouchError) in
            .string(try await m.ttyText(a.int("tty"), file: at.file, line: at.line))
        },
        machine("wait_until_tty_matches", [.integer("tty"), .string("regex"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitUntilTTYMatches(a.int("tty"), a.string("regex"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("dump_tty_contents", [.integer("tty")]) { m, a, at throws(VouchError) in
            try await m.dumpTTYContents(a.int("tty"), file: at.file, line: at.line)
            return .null
        },
        machine("wait_for_x", [.timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForX(timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        machine("get_window_names") { m, _, at throws(VouchError) in
            .array(try await m.windowNames(file: at.file, line: at.line).map { .string($0) })
        },
        machine("wait_for_window", [.string("regex"), .timeout()]) { m, a, at throws(VouchError) in
            try await m.waitForWindow(a.string("regex"), timeout: a.timeout, file: at.file, line: at.line)
            return .null
        },
        // nixpkgs returns the monitor's raw transcript, prompt included.
        machine("send_monitor_command", [.string("command")]) { m, a, _ throws(VouchError) in
            .string(try await m.monitorTranscript(a.string("command")))
        },
        machine("qmp_send", [.string("command"), .json("arguments")]) { m, a, _ throws(VouchError) in
            try await m.qmp(a.string("command"), arguments: a.values["arguments"].flatMap { $0 == .null ? nil : $0 })
        },
        machine("qmp_next_event", [.timeout()]) { m, a, _ throws(VouchError) in
            try await m.nextQMPEvent(timeout: a.timeout) ?? .null
        },
        machine("snapshot_create", [.string("name")]) { m, a, _ throws(VouchError) in try await m.snapshot(a.string("name")); return .null },
        machine("snapshot_restore", [.string("name")]) { m, a, _ throws(VouchError) in try await m.restore(a.string("name")); return .null },
    ]

    private static let driverCalls: [BridgeCall] = [
        driver("hello") { context, _ in
            let d = context.driver
            return [
                "machines": .array(d.machines.map(describe)),
                "vlans": .array(d.network.vlans.map { vlan in
                    ["nr": .number(Double(vlan)),
                     "socketDirectory": d.spec.network == .vde ? .string(d.runDirectory + "/vde\(vlan).ctl") : .null]
                }),
                "network": .string(d.spec.network.rawValue),
                "outputDirectory": .string(d.options.outputDirectory.path),
                "globalTimeout": .number(d.options.globalTimeout ?? d.spec.globalTimeout),
                "table": BridgeTable.json,
            ]
        },
        driver("start_all") { context, _ throws(VouchError) in try await context.driver.startAll(); return .null },
        driver("create_machine", [.string("start_command"), .string("name", nullable: true)]) { context, a throws(VouchError) in
            describe(try context.driver.createMachine(startScript: a.string("start_command"), name: a.optionalString("name")))
        },
        driver("snapshot_all", [.string("name")]) { context, a throws(VouchError) in
            try await context.driver.snapshotAll(a.string("name"))
            return .null
        },
        driver("restore_all", [.string("name")]) { context, a throws(VouchError) in
            try await context.driver.restoreAll(a.string("name"))
            return .null
        },
        driver("serial_stdout", [.bool("on")]) { context, a in
            context.driver.log.showSerialOnTerminal(a.bool("on"))
            return .null
        },
        driver("log", [.string("message"), .string("level"), .string("machine_name", nullable: true)]) { context, a in
            let log = context.driver.log, message = a.string("message"), machine = a.optionalString("machine_name")
            switch a.string("level") {
            case "warning": log.warning(message, machine: machine)
            case "error": log.error(message, machine: machine)
            default: log.log(message, machine: machine)
            }
            return .null
        },
        driver("shell_interact", [.string("machine_name")]) { context, a throws(VouchError) in
            .string(try await context.server.startInteraction(try context.driver.machine(a.string("machine_name"))))
        },
        driver("shell_interact_done", [.string("machine_name")]) { context, a throws(VouchError) in
            let machine = try context.driver.machine(a.string("machine_name"))
            try await context.server.finishInteraction(for: machine.name)
            context.driver.log.log("interactive shell ended", machine: machine.name)
            return .null
        },
        // Handled by the serve loop: sections nest the log (and JUnit cases).
        driver("begin_section", [.string("title"), .string("machine_name", nullable: true), .bool("subtest")], nil),
        driver("end_section", [.string("failure", nullable: true)], nil),
        driver("script_failed", [.string("message"), .string("traceback"), .string("file", nullable: true), .integer("line", nullable: true)], nil),
    ]
}

/// A request's arguments, checked against its call's table entry: the
/// accessors only read what `BridgeCall.validate` made sure is there.
struct BridgeArguments: Sendable {
    let values: [String: JSONValue]
    init(_ values: [String: JSONValue]) { self.values = values }

    /// nixpkgs' `None` timeouts mean "no limit"; Vouch waits always have one.
    static let unlimited = 1e9

    func string(_ key: String) -> String { values[key]?.stringValue ?? "" }
    func optionalString(_ key: String) -> String? { values[key]?.stringValue }
    func bool(_ key: String) -> Bool { values[key]?.boolValue ?? false }
    func number(_ key: String) -> Double {
        if case .number(let n)? = values[key] { return n }
        return 0
    }
    func optionalNumber(_ key: String) -> Double? {
        if case .number(let n)? = values[key] { return n }
        return nil
    }
    func int(_ key: String) -> Int { values[key]?.intValue ?? 0 }
    func optionalInt(_ key: String) -> Int? { values[key]?.intValue }
    func strings(_ key: String) -> [String] { values[key]?.arrayValue?.compactMap(\.stringValue) ?? [] }
    /// The `timeout` argument; None is no limit.
    var timeout: Double {
        if case .number(let n)? = values["timeout"] { return n }
        return Self.unlimited
    }
}
