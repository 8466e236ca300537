import Foundation
import VouchBackends
import VouchSupport

extension Machine {
    /// Presses a key combination in QEMU's key names, e.g. `ret`, `alt-f2`,
    /// `ctrl-alt-delete` (or a scancode, `0x1c`), then waits `delay` seconds.
    /// - Throws: `.unsupported` where the backend has no keyboard.
    public func sendKey(_ combination: String, delay pause: Double = 0.01, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        try await press(combination, location: .init(file: file, line: line))
        log.log("sent key \(combination)", machine: name)
        if pause > 0 { try await delay(pause) }
    }

    /// Types `text` one key at a time, `delay` seconds apart, as nixpkgs'
    /// `send_chars`: upper case as `shift-…`, space, newline and tab as
    /// their keys, punctuation as US-layout scancodes.
    /// - Throws: `.invalidSpec` for a character no key types (checked before
    ///   any key is sent); `.unsupported` where the backend has no keyboard.
    public func sendChars(_ text: String, delay pause: Double = 0.01, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let location = SourceLocation(file: file, line: line)
        var combinations: [String] = []
        for character in text {
            guard let combination = KeyNames.combination(for: character) else {
                throw VouchError(.invalidSpec, "sendChars: no key types \(String(reflecting: String(character))) (a US keyboard has only ASCII)",
                                 machine: name, location: location)
            }
            combinations.append(combination)
        }
        log.log("sending keys \(String(reflecting: text))", machine: name)
        for combination in combinations {
            try await press(combination, location: location)
            if pause > 0 { try await delay(pause) }
        }
    }

    private func press(_ combination: String, location: SourceLocation) async throws(VouchError) {
        do {
            try await start()
            let keys = try capability(KeyInput.self, .keys, for: "sendKey(\(combination))")
            try await keys.sendKeys(combination.split(separator: "-").map(String.init))
        } catch {
            throw error.on(name).at(location)
        }
    }

    /// Writes `text` to the serial console's input (nixpkgs' `send_console`):
    /// a getty or a program reading `ttyS0` in the guest sees it.
    /// - Throws: `.unsupported` where the backend has no serial console input.
    public func sendConsole(_ text: String, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        do {
            try await start()
            let console = try capability(ConsoleInput.self, .consoleInput, for: "sendConsole")
            log.log("sending to the serial console: \(String(reflecting: text))", machine: name)
            try await console.sendConsole(Array(text.utf8))
        } catch {
            throw error.on(name).at(.init(file: file, line: line))
        }
    }

    /// The serial console's output for a live view (`console_interact`):
    /// the complete lines from byte `offset` on (from the oldest still in
    /// memory if that is later; a negative offset means from now), the
    /// unterminated line after them, and the offset where they end.
    public func consoleOutput(from offset: Int) -> (lines: String, partial: String, end: Int) {
        let (lines, _, end) = console.text(from: offset < 0 ? console.end : offset)
        return (lines, console.partialLine, end)
    }

    /// The text of virtual console `tty` (`/dev/vcs<tty>` in the guest),
    /// in lines as wide as the console.
    /// - Throws: `.unsupported` when the guest has no such console (a
    ///   container, a host without virtual terminals).
    public func ttyText(_ tty: Int, file: String = #filePath, line: Int = #line) async throws(VouchError) -> String {
        let location = SourceLocation(file: file, line: line)
        guard try await execute("test -e /dev/vcs\(tty) && test -e /dev/tty\(tty)", timeout: 30, file: file, line: line).status == 0 else {
            throw VouchError(.unsupported, "this machine has no virtual console \(tty) (/dev/vcs\(tty) does not exist in the guest)",
                             machine: name, location: location)
        }
        return try await succeed("fold -w \"$(stty -F /dev/tty\(tty) size | cut -d' ' -f2)\" /dev/vcs\(tty)", timeout: 60, file: file, line: line)
    }

    /// Waits until `regex` matches the text of virtual console `tty`.
    /// - Throws: `.timeout` with the console's last text; as `ttyText`.
    public func waitUntilTTYMatches(_ tty: Int, _ regex: String, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let pattern = try Self.regex(regex, machine: name)
        log.log("waiting for \"\(regex)\" to appear on tty \(tty)", machine: name)
        try await poll("\"\(regex)\" on tty \(tty)", timeout: timeout, location: .init(file: file, line: line)) { _ throws(VouchError) in
            let text = try await self.ttyText(tty, file: file, line: line)
            return Self.matches(pattern, text) ? .done : .notYet(seen: "tty \(tty) shows:\n" + text)
        }
    }

    /// Logs the text of virtual console `tty` and returns it (nixpkgs sends
    /// it to the guest's journal; the test log is where one looks).
    @discardableResult
    public func dumpTTYContents(_ tty: Int, file: String = #filePath, line: Int = #line) async throws(VouchError) -> String {
        let text = try await ttyText(tty, file: file, line: line)
        log.log("tty \(tty) shows:\n" + text, machine: name)
        return text
    }

    /// Waits until the first QMP event from now on for which `matching` is
    /// true; returns it.
    /// - Throws: `.timeout` naming the events seen; `.unsupported` without QMP.
    @discardableResult
    public func waitForQMPEvent(
        timeout: Double = 600, file: String = #filePath, line: Int = #line, matching: @Sendable (JSONValue) -> Bool
    ) async throws(VouchError) -> JSONValue {
        let deadline = Deadline(seconds: timeout)
        var seen: [String] = []
        while !deadline.hasPassed {
            guard let event = try await nextQMPEvent(timeout: deadline.remaining) else { break }
            if matching(event) { return event }
            seen.append(event["event"]?.stringValue ?? "?")
        }
        throw VouchError(.timeout, "no matching QMP event within \(formatSeconds(timeout))"
                         + (seen.isEmpty ? " (none came)" : " (came: \(seen.suffix(20).joined(separator: ", ")))"),
                         machine: name, location: .init(file: file, line: line))
    }
}
