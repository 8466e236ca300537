import Foundation
import Glibc

/// nixpkgs `None` timeouts mean "no limit"; Vouch waits always have one.
private let unlimited = 1e9

extension BridgeServer {
    /// Performs one call of the script and returns its JSON result.
    /// - Throws: the `VouchError` of the Machine or Driver method called.
    func dispatch(_ request: BridgeRequest) async throws -> JSONValue {
        let a = request.args
        let file = request.location?.file ?? script?.path ?? "<script>"
        let line = request.location?.line ?? 0
        guard let name = request.machine else { return try await driverCall(request) }
        let m = try driver.machine(name)
        func timeout(_ fallback: Double = 900) -> Double { a.number("timeout") ?? fallback }
        func need(_ key: String) throws -> String { try a.required(key, for: request.call) }

        switch request.call {
        case "booted": return .bool(await m.booted)
        case "is_up": return .bool(await m.isUp())
        case "start": try await m.start()
        case "shutdown": try await m.shutdown()
        case "crash": try await m.crash()
        case "reboot": try await m.reboot()
        case "wait_for_shutdown": try await m.waitForShutdown(timeout: unlimited)
        case "execute":
            let command = try need("command")
            do {
                let r = try await m.execute(command, timeout: a.number("timeout") ?? unlimited, file: file, line: line)
                return [.number(Double(r.status)), .string(r.text)]
            } catch let error as VouchError where error.kind == .machineDown && a.bool("tolerate_loss") == true {
                return [.number(-1), .string("")]
            }
        case "succeed", "fail":
            var output = ""
            for command in a.strings("commands") {
                output += request.call == "succeed"
                    ? try await m.succeed(command, timeout: timeout(unlimited), file: file, line: line)
                    : try await m.fail(command, timeout: timeout(unlimited), file: file, line: line)
            }
            return .string(output)
        case "wait_until_succeeds":
            return .string(try await m.waitUntilSucceeds(try need("command"), timeout: timeout(), file: file, line: line))
        case "wait_until_fails":
            return .string(try await m.waitUntilFails(try need("command"), timeout: timeout(), file: file, line: line))
        case "sleep": try await m.sleep(a.number("seconds") ?? 0)
        case "wait_for_unit":
            try await m.waitForUnit(try need("unit"), user: a.string("user"), timeout: timeout(), file: file, line: line)
        case "wait_for_file": try await m.waitForFile(try need("path"), timeout: timeout(), file: file, line: line)
        case "wait_for_open_port":
            try await m.waitForOpenPort(a.int("port") ?? 0, address: a.string("addr") ?? "localhost", timeout: timeout(), file: file, line: line)
        case "wait_for_closed_port":
            try await m.waitForClosedPort(a.int("port") ?? 0, address: a.string("addr") ?? "localhost", timeout: timeout(), file: file, line: line)
        case "wait_for_open_unix_socket":
            try await m.waitForOpenUnixSocket(try need("path"), isDatagram: a.bool("is_datagram") ?? false, timeout: timeout(), file: file, line: line)
        case "wait_for_console_text":
            return .string(try await m.waitForConsoleText(try need("regex"), timeout: timeout(unlimited), file: file, line: line))
        case "get_console_log": return .string(await m.getConsoleLog())
        case "systemctl", "start_job", "stop_job":
            let r: CommandResult
            switch request.call {
            case "systemctl": r = try await m.systemctl(try need("query"), user: a.string("user"), file: file, line: line)
            case "start_job": r = try await m.startJob(try need("unit"), user: a.string("user"), file: file, line: line)
            default: r = try await m.stopJob(try need("unit"), user: a.string("user"), file: file, line: line)
            }
            return [.number(Double(r.status)), .string(r.text)]
        case "get_unit_info":
            let info = try await m.getUnitInfo(try need("unit"), user: a.string("user"), file: file, line: line)
            return .object(info.mapValues { .string($0) })
        case "get_unit_property":
            return .string(try await m.getUnitProperty(try need("unit"), try need("property"), user: a.string("user"), file: file, line: line))
        case "require_unit_state":
            try await m.requireUnitState(try need("unit"), a.string("state") ?? "active", file: file, line: line)
        case "copy_from_host": try await m.copyFromHost(try need("source"), to: try need("target"), file: file, line: line)
        case "copy_from_machine":
            try await m.copyFromMachine(try need("source"), to: a.string("target_dir") ?? "", file: file, line: line)
        case "block": try await m.block()
        case "unblock": try await m.unblock()
        case "forward_port":
            return .number(Double(try await m.forwardPort(host: a.int("host_port"), guest: a.int("guest_port") ?? 80)))
        case "send_key": try await m.sendKey(try need("key"))
        case "send_monitor_command": return .string(try await m.sendMonitorCommand(try need("command")))
        case "snapshot_create": try await m.snapshot(try need("name"))
        case "snapshot_restore": try await m.restore(try need("name"))
        case "shell_interact": return .string(try await startInteraction(m))
        case "shell_interact_done":
            try await takeInteraction(for: m.name)?.value
            driver.log.log("interactive shell ended", machine: m.name)
        default:
            throw VouchError(.unsupported, "not supported yet by Vouch: \(request.call)", machine: name)
        }
        return .null
    }

    private func driverCall(_ request: BridgeRequest) async throws -> JSONValue {
        let a = request.args
        switch request.call {
        case "hello":
            return [
                "machines": .array(driver.machines.map { .string($0.name) }),
                "vlans": .array(driver.network.vlans.map { ["nr": .number(Double($0))] }),
                "outputDirectory": .string(driver.options.outputDirectory.path),
                "globalTimeout": .number(driver.options.globalTimeout ?? driver.spec.globalTimeout),
            ]
        case "start_all": try await driver.startAll()
        case "snapshot_all": try await driver.snapshotAll(try a.required("name", for: request.call))
        case "restore_all": try await driver.restoreAll(try a.required("name", for: request.call))
        case "serial_stdout": driver.log.showSerialOnTerminal(a.bool("on") ?? true)
        case "log":
            let message = a.string("message") ?? ""
            let machine = a.string("machine_name")
            switch a.string("level") {
            case "warning": driver.log.warning(message, machine: machine)
            case "error": driver.log.error(message, machine: machine)
            default: driver.log.log(message, machine: machine)
            }
        default:
            throw VouchError(.unsupported, "not supported yet by Vouch: \(request.call)")
        }
        return .null
    }

    /// Listens on a private socket the interpreter connects to, and relays
    /// it to an interactive shell on `machine` until that shell exits.
    private func startInteraction(_ machine: Machine) async throws -> String {
        let path = driver.runDirectory + "/interact-\(machine.variableName).sock"
        unlink(path)
        let listener = try UnixSocket.listen(path: path)
        driver.log.log("interactive shell starting (Ctrl-D or exit returns)", machine: machine.name)
        let task = Task {
            defer { close(listener); unlink(path) }
            let fd = try await acceptOne(listener, within: 30)
            let user = FDReader(fd: dup(fd), name: "interact-\(machine.name)")
            defer { user.shutdownSocket(); close(fd) }
            try await machine.shellInteract(input: user.queue) { bytes in try? writeAll(fd: fd, bytes) }
        }
        record(interaction: task, for: machine.name)
        return path
    }
}

/// Accepts one connection on `listener`, waiting at most `seconds`.
/// - Throws: `VouchError.timeout` when nobody connects.
func acceptOne(_ listener: Int32, within seconds: Double) async throws -> Int32 {
    let end = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < end {
        try Task.checkCancellation()
        var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        if poll(&poller, 1, 0) > 0 {
            let fd = accept(listener, nil, nil)
            if fd >= 0 { return fd }
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw VouchError(.timeout, "nobody connected to the interactive shell within \(formatSeconds(seconds))")
}
