import Foundation
import VouchGuest
import VouchSupport

extension Machine {
    /// Runs `systemctl <query>`, as `user` (via their user manager) if given.
    /// - Returns: the status and output; a non-zero status is not an error here.
    @discardableResult
    public func systemctl(_ query: String, user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) -> CommandResult {
        try await execute(Self.systemctlCommand(query, user: user), file: file, line: line)
    }

    static func systemctlCommand(_ query: String, user: String?) -> String {
        guard let user else { return "systemctl \(query)" }
        let inner = "XDG_RUNTIME_DIR=/run/user/$(id -u) systemctl --user \(query)"
        return "su -l \(shellQuote(user)) --shell /bin/sh -c \(shellQuote(inner))"
    }

    /// `systemctl show UNIT` as a dictionary of properties.
    /// - Throws: `VouchError.commandFailed` if systemctl fails.
    public func getUnitInfo(_ unit: String, user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) -> [String: String] {
        let r = try await systemctl("--no-pager show \(shellQuote(unit))", user: user, file: file, line: line)
        guard r.status == 0 else {
            throw VouchError(.commandFailed, NixpkgsMessage.unitInfoFailed.format(
                                 ["unit": unit, "user": user.map { " under user \"\($0)\"" } ?? "", "status": "\(r.status)"]), machine: name,
                             command: "systemctl show \(unit)", status: r.status, outputTail: tail(r.text),
                             location: .init(file: file, line: line))
        }
        var info: [String: String] = [:]
        for row in r.text.split(separator: "\n") {
            guard let eq = row.firstIndex(of: "=") else { continue }
            info[String(row[..<eq])] = String(row[row.index(after: eq)...])
        }
        return info
    }

    /// One property of a unit, e.g. `getUnitProperty("nginx.service", "MainPID")`.
    /// - Throws: `VouchError.commandFailed` if the property does not exist.
    public func getUnitProperty(_ unit: String, _ property: String, user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) -> String {
        let info = try await getUnitInfo(unit, user: user, file: file, line: line)
        guard let value = info[property] else {
            throw VouchError(.commandFailed, "unit \(unit) has no property \(property)", machine: name,
                             location: .init(file: file, line: line))
        }
        return value
    }

    /// Throws unless the unit's ActiveState is `state`.
    /// - Throws: `VouchError.unitFailed` naming the actual state.
    public func requireUnitState(_ unit: String, _ state: String = "active", user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let actual = try await getUnitProperty(unit, "ActiveState", user: user, file: file, line: line)
        guard actual == state else {
            throw VouchError(.unitFailed, NixpkgsMessage.unitNotInState.format(["unit": unit, "expected": state, "actual": actual]),
                             machine: name, location: .init(file: file, line: line))
        }
    }

    /// Waits until `unit` is active.
    ///
    /// Fails at once when the unit is `failed`, or `inactive` with no job
    /// pending (it will never start by itself). On timeout the error and the
    /// log show the unit's state, the failed units and the journal tail.
    /// - Throws: `VouchError.unitFailed` or `.timeout`.
    public func waitForUnit(_ unit: String, user: String? = nil, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        log.log("waiting for unit \(unit)" + (user.map { " of user \($0)" } ?? ""), machine: name)
        let location = SourceLocation(file: file, line: line)
        try await poll("unit \(unit) to become active", timeout: timeout, location: location,
                       onTimeout: { await self.diagnostics() }) { _ throws(VouchError) in
            let info = try await self.getUnitInfo(unit, user: user, file: file, line: line)
            let state = info["ActiveState"] ?? "unknown"
            let sub = info["SubState"] ?? ""
            if info["LoadState"] == "not-found" {
                // nixpkgs says only that it is inactive; say why too.
                let why = info["LoadError"].map { " (\($0))" } ?? ""
                throw VouchError(.unitFailed, NixpkgsMessage.unitInactive.format(["unit": unit])
                                 + ": unit \"\(unit)\" does not exist, systemd found no unit file for it\(why)",
                                 machine: self.name, location: location)
            }
            switch state {
            case "active":
                return .done
            case "failed":
                throw VouchError(.unitFailed, NixpkgsMessage.unitReachedState.format(["unit": unit, "state": "failed"]), machine: self.name,
                                 outputTail: await self.unitJournal(unit, user: user), location: location)
            case "inactive":
                let jobs = try await self.systemctl("list-jobs --full 2>&1", user: user, file: file, line: line)
                if jobs.text.contains("No jobs") {
                    let again = try await self.getUnitInfo(unit, user: user, file: file, line: line)
                    if again["ActiveState"] == "inactive" {
                        throw VouchError(.unitFailed, NixpkgsMessage.unitInactive.format(["unit": unit]),
                                         machine: self.name, outputTail: await self.unitJournal(unit, user: user),
                                         location: location)
                    }
                }
            default: break
            }
            return .notYet(seen: "\(unit): \(state) (\(sub))")
        }
    }

    /// Waits until `unit`'s ActiveState is `state` (`inactive`, `activating`,
    /// `active`, `reloading`, `deactivating`, `failed`…), whatever it passes
    /// through on the way: unlike `waitForUnit`, no state ends the wait early.
    /// - Throws: `.timeout` with the states seen last.
    public func waitForUnitActiveState(
        _ unit: String, _ state: String, user: String? = nil, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) {
        log.log("waiting for unit \(unit) to be \(state)" + (user.map { " (user \($0))" } ?? ""), machine: name)
        try await poll("unit \(unit) to be \(state)", timeout: timeout, location: .init(file: file, line: line)) { _ throws(VouchError) in
            let actual = try await self.getUnitProperty(unit, "ActiveState", user: user, file: file, line: line)
            return actual == state ? .done : .notYet(seen: "\(unit): \(actual)")
        }
    }

    private func unitJournal(_ unit: String, user: String?) async -> String {
        let r = try? await execute("journalctl --no-pager -n 20 -u \(shellQuote(unit))", timeout: 20)
        return r.map { tail($0.text) } ?? ""
    }

    /// Starts a unit (`systemctl start`) and returns the result.
    @discardableResult
    public func startJob(_ unit: String, user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) -> CommandResult {
        try await systemctl("start \(shellQuote(unit))", user: user, file: file, line: line)
    }

    /// Stops a unit (`systemctl stop`) and returns the result.
    @discardableResult
    public func stopJob(_ unit: String, user: String? = nil, file: String = #filePath, line: Int = #line) async throws(VouchError) -> CommandResult {
        try await systemctl("stop \(shellQuote(unit))", user: user, file: file, line: line)
    }

    /// The last `lines` lines of the journal, of one unit if given.
    /// - Throws: `VouchError.commandFailed` if journalctl fails.
    public func journal(unit: String? = nil, lines: Int = 30, file: String = #filePath, line: Int = #line) async throws(VouchError) -> String {
        var command = "journalctl --no-pager -n \(lines)"
        if let unit { command += " -u \(shellQuote(unit))" }
        return try await succeed(command, file: file, line: line)
    }
}
