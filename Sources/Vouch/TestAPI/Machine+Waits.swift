import Foundation
import VouchBackends
import VouchSupport

extension Machine {
    /// The outcome of one polling attempt.
    enum Poll {
        case done
        /// Not yet; `seen` is what the attempt observed, for the timeout message.
        case notYet(seen: String)
    }

    /// Repeats `attempt` with a growing pause (0.1 s up to 1 s) until it is done.
    /// Each attempt gets the deadline of the whole wait.
    /// - Throws: `.timeout` naming `what` and the last thing seen; any error
    ///   `attempt` throws ends the wait at once, as does a VMM fault.
    func poll(
        _ what: String, timeout: Double, location: SourceLocation,
        onTimeout: (@Sendable () async -> String)? = nil,
        _ attempt: @escaping @Sendable (Deadline) async throws(VouchError) -> Poll
    ) async throws(VouchError) {
        let began = ContinuousClock.now
        let deadline = Deadline(seconds: timeout)
        var pause = 0.1
        var seen = ""
        while !deadline.hasPassed {
            try context.health.check()
            do {
                switch try await attempt(deadline) {
                case .done: return
                case .notYet(let last): seen = last
                }
            } catch where error.kind == .timeout && deadline.hasPassed {
                // The attempt ran into the wait's own deadline: that is the wait timing out.
                break
            }
            if deadline.hasPassed { break }
            try await delay(min(pause, deadline.remaining))
            pause = min(pause * 2, 1)
        }
        var tailText = seen
        if let note = await backend?.diagnose() { tailText += (tailText.isEmpty ? "" : "\n") + note }
        if let onTimeout {
            let extra = await onTimeout()
            if !extra.isEmpty { tailText += (tailText.isEmpty ? "" : "\n") + extra }
        }
        log.error("timed out after \(formatSeconds(timeout)) waiting for \(what)", machine: name)
        if !tailText.isEmpty { log.error("last seen:\n" + tail(tailText, lines: 40), machine: name) }
        let text = NixpkgsMessage.actionTimedOut.format([
            "elapsed": NixpkgsMessage.elapsed((ContinuousClock.now - began).seconds), "timeout": NixpkgsMessage.pythonFloat(timeout),
        ])
        throw VouchError(.timeout, "\(text): waiting for \(what)", machine: name,
                         outputTail: tail(tailText, lines: 40), location: location)
    }

    /// Waits until `command` exits 0; returns its output. Each attempt may
    /// take up to `attemptTimeout` seconds (default: what is left of
    /// `timeout`); one that takes longer is interrupted and counts as failed.
    /// - Throws: `.timeout` with the last attempt's status and output.
    @discardableResult
    public func waitUntilSucceeds(
        _ command: String, timeout: Double = 900, attemptTimeout: Double? = nil, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> String {
        try await waitUntil(command, succeeds: true, timeout: timeout, attemptTimeout: attemptTimeout, location: .init(file: file, line: line))
    }

    /// Waits until `command` exits non-zero; returns its output. Attempts are
    /// bounded as in `waitUntilSucceeds`; one that times out is not a failure
    /// of the command, so it does not end the wait.
    /// - Throws: `.timeout` with the last attempt's output.
    @discardableResult
    public func waitUntilFails(
        _ command: String, timeout: Double = 900, attemptTimeout: Double? = nil, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> String {
        try await waitUntil(command, succeeds: false, timeout: timeout, attemptTimeout: attemptTimeout, location: .init(file: file, line: line))
    }

    private func waitUntil(
        _ command: String, succeeds: Bool, timeout: Double, attemptTimeout: Double?, location: SourceLocation
    ) async throws(VouchError) -> String {
        let goal = succeeds ? "succeed" : "fail"
        log.log("waiting for \(succeeds ? "success" : "failure"): \(command)", machine: name)
        let output = OutputBox()
        try await poll("`\(command)` to \(goal)", timeout: timeout, location: location) { deadline throws(VouchError) in
            let bound = attemptTimeout.map { min($0, deadline.remaining) } ?? deadline.remaining
            let r: CommandResult
            do throws(VouchError) {
                r = try await self.execute(command, timeout: bound, file: location.file, line: location.line)
            } catch where error.kind == .timeout && attemptTimeout != nil && !deadline.hasPassed {
                return .notYet(seen: "the attempt was interrupted after \(formatSeconds(bound)) (attempt_timeout)")
            }
            if (r.status == 0) == succeeds { output.value = r.text; return .done }
            return .notYet(seen: "exit status \(r.status)\n\(r.text)")
        }
        return output.value
    }

    /// Waits until `path` exists in the guest.
    /// - Throws: `.timeout`.
    public func waitForFile(_ path: String, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        log.log("waiting for file \(path)", machine: name)
        try await poll("file \(path)", timeout: timeout, location: .init(file: file, line: line)) { deadline throws(VouchError) in
            let r = try await self.execute("test -e \(shellQuote(path))", timeout: deadline.remaining, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "\(path) does not exist")
        }
    }

    /// Waits until something accepts TCP connections on `address`:`port` in the guest.
    /// - Throws: `.timeout` (with failed units and the journal tail on systemd guests).
    public func waitForOpenPort(
        _ port: Int, address: String = "localhost", timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) {
        log.log("waiting for TCP port \(address):\(port) to open", machine: name)
        try await poll("TCP port \(address):\(port) to open", timeout: timeout, location: .init(file: file, line: line),
                       onTimeout: { await self.diagnostics() }) { deadline throws(VouchError) in
            let r = try await self.execute(Self.portProbe(address, port), timeout: deadline.remaining, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "connection to \(address):\(port) refused or unreachable")
        }
    }

    /// Waits until nothing accepts TCP connections on `address`:`port`.
    /// - Throws: `.timeout`.
    public func waitForClosedPort(
        _ port: Int, address: String = "localhost", timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) {
        log.log("waiting for TCP port \(address):\(port) to close", machine: name)
        try await poll("TCP port \(address):\(port) to close", timeout: timeout, location: .init(file: file, line: line)) { deadline throws(VouchError) in
            let r = try await self.execute(Self.portProbe(address, port), timeout: deadline.remaining, file: file, line: line)
            return r.status != 0 ? .done : .notYet(seen: "\(address):\(port) still accepts connections")
        }
    }

    /// Waits until a process listens on the unix socket at `path` (needs `nc -U` in the guest).
    /// - Throws: `.timeout`.
    public func waitForOpenUnixSocket(
        _ path: String, isDatagram: Bool = false, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) {
        log.log("waiting for unix socket \(path)", machine: name)
        let flags = isDatagram ? "-uzU" : "-zU"
        try await poll("unix socket \(path)", timeout: timeout, location: .init(file: file, line: line)) { deadline throws(VouchError) in
            let r = try await self.execute("nc \(flags) \(shellQuote(path))", timeout: deadline.remaining, file: file, line: line)
            return r.status == 0 ? .done : .notYet(seen: "nothing listens on \(path)")
        }
    }

    /// Waits until the serial console prints a line matching `pattern` (a
    /// regular expression; complete lines only, as in nixpkgs), counting
    /// lines printed before the call too (the last MiB). Returns the
    /// matching text. Each poll scans only
    /// what is new (plus a little overlap, for matches across polls).
    /// - Throws: `.timeout` with the console tail; `.invalidSpec` for a bad pattern.
    @discardableResult
    public func waitForConsoleText(
        _ pattern: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> String {
        log.log("waiting for \(pattern) on the console", machine: name)
        let regex: Regex<AnyRegexOutput>
        do { regex = try Regex(pattern) } catch {
            throw VouchError(.invalidSpec, "invalid regular expression \(pattern)", machine: name, cause: SendableError(error))
        }
        let found = OutputBox()
        let console = self.console
        let cursor = CursorBox()
        nonisolated(unsafe) let r = regex
        try await poll("console text matching \(pattern)", timeout: timeout, location: .init(file: file, line: line)) { _ throws(VouchError) in
            // Complete lines only, as nixpkgs matches: a line still arriving
            // could match a prefix of what it will say (`marker-4` for `marker-42`).
            let (text, _, end) = console.text(from: cursor.value)
            if let m = text.firstMatch(of: r) {
                found.value = String(text[m.range])
                return .done
            }
            // Keep the last 4 KiB to catch a match that straddles two polls.
            cursor.value = max(0, end - 4096)
            return .notYet(seen: console.tail(lines: 10))
        }
        return found.value
    }

    /// Everything the serial console printed since the machine last started
    /// (read from its console log file, which keeps all boots), as nixpkgs'
    /// `get_console_log`.
    public func getConsoleLog() -> String { console.sinceBoot }

    /// Sleeps `seconds` (guest time passes as host time).
    /// - Throws: `.cancelled`.
    public func sleep(_ seconds: Double) async throws(VouchError) {
        log.log("sleeping for \(formatSeconds(seconds))", machine: name)
        try await delay(seconds)
    }

    /// A guest command that exits 0 iff `address`:`port` accepts TCP; bash only, no extra process.
    static func portProbe(_ address: String, _ port: Int) -> String {
        "exec 3<>/dev/tcp/\(address)/\(port)"
    }

    /// Failed units and the journal tail, for messages after a wait timed out.
    /// Empty when the guest has no systemd or does not answer.
    func diagnostics() async -> String {
        guard booted, context.health.fault == nil else { return "" }
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

/// Where a console wait has read to.
final class CursorBox: @unchecked Sendable {
    var value = 0
}
