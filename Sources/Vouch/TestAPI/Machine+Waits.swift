import Foundation

extension Machine {
    /// The outcome of one polling attempt.
    enum Poll {
        case done
        /// Not yet; `seen` is what the attempt observed, for the timeout message.
        case notYet(seen: String)
    }

    /// Repeats `attempt` with a growing pause (0.1 s up to 1 s) until it is done.
    /// - Throws: `VouchError.timeout` naming `what` and the last thing seen;
    ///   any error `attempt` throws ends the wait at once.
    func poll(
        _ what: String, timeout: Double, location: SourceLocation,
        onTimeout: (@Sendable () async -> String)? = nil,
        _ attempt: @escaping @Sendable (Double) async throws -> Poll
    ) async throws {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: .seconds(timeout))
        var pause = 0.1
        var seen = ""
        while true {
            let remaining = (end - clock.now).seconds
            if remaining <= 0 { break }
            switch try await attempt(max(remaining, 1)) {
            case .done: return
            case .notYet(let last): seen = last
            }
            if (end - clock.now).seconds <= 0 { break }
            try await Task.sleep(for: .seconds(min(pause, max(0, (end - clock.now).seconds))))
            pause = min(pause * 2, 1)
        }
        var tailText = seen
        if let onTimeout {
            let extra = await onTimeout()
            if !extra.isEmpty { tailText += (tailText.isEmpty ? "" : "\n") + extra }
        }
        log.error("timed out after \(formatSeconds(timeout)) waiting for \(what)", machine: name)
        if !tailText.isEmpty { log.error("last seen:\n" + tail(tailText, lines: 40), machine: name) }
        throw VouchError(.timeout, "timed out after \(formatSeconds(timeout)) waiting for \(what)", machine: name,
                         outputTail: tail(tailText, lines: 40), location: location)
    }

    /// Waits until `command` exits 0; returns its output.
    /// - Throws: `VouchError.timeout` with the last attempt's status and output.
    @discardableResult
    public func waitUntilSucceeds(
        _ command: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> String {
        try await waitUntil(command, succeeds: true, timeout: timeout, location: .init(file: file, line: line))
    }

    /// Waits until `command` exits non-zero; returns its output.
    /// - Throws: `VouchError.timeout` with the last attempt's output.
    @discardableResult
    public func waitUntilFails(
        _ command: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> String {
        try await waitUntil(command, succeeds: false, timeout: timeout, location: .init(file: file, line: line))
    }

    private func waitUntil(_ command: String, succeeds: Bool, timeout: Double, location: SourceLocation) async throws -> String {
        let goal = succeeds ? "succeed" : "fail"
        log.log("waiting for \(succeeds ? "success" : "failure"): \(command)", machine: name)
        let output = OutputBox()
        try await poll("`\(command)` to \(goal)", timeout: timeout, location: location) { left in
            let r = try await self.execute(command, timeout: left, file: location.file, line: location.line)
            if (r.status == 0) == succeeds { output.value = r.text; return .done }
            return .notYet(seen: "exit status \(r.status)\n\(r.text)")
        }
        return output.value
    }

    /// Waits until `path` exists in the guest.
    /// - Throws: `VouchError.timeout`.
    public func waitForFile(_ path: String, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws {
        log.log("waiting for file \(path)", machine: name)
        try await poll("file \(path)", timeout: timeout, location: .init(file: file, line: line)) { left in
            let r = try await self.execute("test -e \(shellQuote(path))", timeout: left, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "\(path) does not exist")
        }
    }

    /// Waits until something accepts TCP connections on `address`:`port` in the guest.
    /// - Throws: `VouchError.timeout` (with failed units and the journal tail on systemd guests).
    public func waitForOpenPort(
        _ port: Int, address: String = "localhost", timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws {
        log.log("waiting for TCP port \(address):\(port) to open", machine: name)
        try await poll("TCP port \(address):\(port) to open", timeout: timeout, location: .init(file: file, line: line),
                       onTimeout: { await self.diagnostics() }) { left in
            let r = try await self.execute(Self.portProbe(address, port), timeout: left, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "connection to \(address):\(port) refused or unreachable")
        }
    }

    /// Waits until nothing accepts TCP connections on `address`:`port`.
    /// - Throws: `VouchError.timeout`.
    public func waitForClosedPort(
        _ port: Int, address: String = "localhost", timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws {
        log.log("waiting for TCP port \(address):\(port) to close", machine: name)
        try await poll("TCP port \(address):\(port) to close", timeout: timeout, location: .init(file: file, line: line)) { left in
            let r = try await self.execute(Self.portProbe(address, port), timeout: left, file: file, line: line)
            return r.status != 0 ? .done : .notYet(seen: "\(address):\(port) still accepts connections")
        }
    }

    /// Waits until a process listens on the unix socket at `path` (needs `nc -U` in the guest).
    /// - Throws: `VouchError.timeout`.
    public func waitForOpenUnixSocket(
        _ path: String, isDatagram: Bool = false, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws {
        log.log("waiting for unix socket \(path)", machine: name)
        let flags = isDatagram ? "-uzU" : "-zU"
        try await poll("unix socket \(path)", timeout: timeout, location: .init(file: file, line: line)) { left in
            let r = try await self.execute("nc \(flags) \(shellQuote(path))", timeout: left, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "nothing listens on \(path)")
        }
    }

    /// Waits until the serial console prints a line matching `pattern` (a
    /// regular expression), counting what was printed before the call too.
    /// Returns the matching text.
    /// - Throws: `VouchError.timeout` with the console tail; `.invalidSpec` for a bad pattern.
    @discardableResult
    public func waitForConsoleText(
        _ pattern: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> String {
        log.log("waiting for \(pattern) on the console", machine: name)
        let regex: Regex<AnyRegexOutput>
        do { regex = try Regex(pattern) } catch {
            throw VouchError(.invalidSpec, "invalid regular expression \(pattern): \(error)", machine: name)
        }
        let found = OutputBox()
        let console = self.console
        nonisolated(unsafe) let r = regex
        try await poll("console text matching \(pattern)", timeout: timeout, location: .init(file: file, line: line)) { _ in
            let text = console.text
            if let m = text.firstMatch(of: r) {
                found.value = String(text[m.range])
                return .done
            }
            return .notYet(seen: console.tail(lines: 10))
        }
        return found.value
    }

    /// Everything the serial console printed since the machine was created.
    public func getConsoleLog() -> String { console.text }

    /// Sleeps `seconds` (guest time passes as host time).
    public func sleep(_ seconds: Double) async throws {
        log.log("sleeping for \(formatSeconds(seconds))", machine: name)
        try await Task.sleep(for: .seconds(seconds))
    }

    /// A guest command that exits 0 iff `address`:`port` accepts TCP; bash only, no extra process.
    static func portProbe(_ address: String, _ port: Int) -> String {
        "exec 3<>/dev/tcp/\(address)/\(port)"
    }

    /// Failed units and the journal tail, for messages after a wait timed out.
    /// Empty when the guest has no systemd.
    func diagnostics() async -> String {
        guard booted else { return "" }
        let check = try? await execute("command -v systemctl >/dev/null", timeout: 10)
        guard check?.status == 0 else { return "" }
        var text = ""
        if let failed = try? await execute("systemctl --no-pager --failed --no-legend --plain", timeout: 20) {
            let units = failed.text.trimmingTrailingNewlines()
            text += "failed units: " + (units.isEmpty ? "none" : "\n" + units)
        }
        if let journal = try? await execute("journalctl --no-pager -n 30 -o short-monotonic", timeout: 20) {
            text += "\nlast 30 journal lines:\n" + journal.text.trimmingTrailingNewlines()
        }
        return text
    }
}

/// A mutable box a polling closure can fill in.
final class OutputBox: @unchecked Sendable {
    var value = ""
}

/// Quotes `s` for a POSIX shell.
public func shellQuote(_ s: String) -> String {
    "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
