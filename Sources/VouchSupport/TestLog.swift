import Foundation
import Glibc
import Synchronization

/// The test log: nested, per-machine, coloured on a terminal, and copied
/// without colour to `vouch.log` in the output directory.
///
/// Nesting follows the task tree (a task-local depth), so concurrent work in
/// child tasks indents under the section that started it.
public final class TestLog: Sendable {
    @TaskLocal package static var depth = 0

    private struct State {
        var file: FileHandle?
        var status: String?
        var serialOnTerminal = true
        var statusLine = true
    }

    private let state: Mutex<State>
    private let color: Bool
    private let live: Bool
    private let start = ContinuousClock.now
    private let quiet: Bool

    /// Creates a log writing to stderr and, if given, to `file`.
    /// - Parameters:
    ///   - color: colour output; nil means "if stderr is a terminal and NO_COLOR is unset".
    ///   - quiet: only write to the file (for unit tests).
    public init(file: URL? = nil, color: Bool? = nil, quiet: Bool = false) {
        let tty = isatty(2) == 1
        self.color = color ?? (tty && ProcessInfo.processInfo.environment["NO_COLOR"] == nil)
        self.live = tty && !quiet
        self.quiet = quiet
        var handle: FileHandle?
        if let file {
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
            handle = FileHandle(forWritingAtPath: file.path)
        }
        state = Mutex(State(file: handle))
    }

    /// Logs a line, prefixed with the machine's name if given.
    public func log(_ message: String, machine: String? = nil) {
        write(message, machine: machine, style: .plain)
    }

    /// Logs a warning (yellow on a terminal).
    public func warning(_ message: String, machine: String? = nil) {
        write(message, machine: machine, style: .warning)
    }

    /// Logs an error (red, bold on a terminal).
    public func error(_ message: String, machine: String? = nil) {
        write(message, machine: machine, style: .error)
    }

    /// Logs a detail to the log file only (and stderr with VOUCH_DEBUG=1).
    public func debug(_ message: String, machine: String? = nil) {
        write(message, machine: machine, style: .debug)
    }

    /// Logs a line the guest printed on its serial console (dimmed).
    public func serial(_ line: String, machine: String) {
        write(line, machine: machine, style: .serial)
    }

    /// Logs many console lines at once: one formatting pass and one write,
    /// so a guest flooding its console costs little per line.
    package func serial(lines: [Substring], machine: String) {
        guard !lines.isEmpty else { return }
        write(lines.joined(separator: "\n"), machine: machine, style: .serial)
    }

    /// Logs `title`, runs `body` one level deeper, then logs how long it took.
    public func nested<T, E: Error>(
        _ title: String, machine: String? = nil, _ body: () async throws(E) -> T
    ) async throws(E) -> T {
        write(title, machine: machine, style: .header)
        let began = ContinuousClock.now
        let result: Result<T, E> = await TestLog.$depth.withValue(TestLog.depth + 1) {
            do throws(E) { return .success(try await body()) } catch { return .failure(error) }
        }
        switch result {
        case .success(let value):
            write("(finished: \(title), in \(Self.seconds(since: began)))", machine: machine, style: .footer)
            return value
        case .failure(let error):
            write("(failed: \(title), after \(Self.seconds(since: began)))", machine: machine, style: .error)
            throw error
        }
    }

    /// Whether the guests' serial console lines are shown on the terminal
    /// (they always go to the log file). nixpkgs' `serial_stdout_on/off`.
    public func showSerialOnTerminal(_ on: Bool) {
        state.withLock { $0.serialOnTerminal = on }
    }

    /// Turns the live status line off for good, e.g. while an interactive
    /// session owns the terminal.
    public func disableStatusLine() {
        setStatus(nil)
        state.withLock { $0.statusLine = false }
    }

    /// Shows (or, with nil, clears) a one-line status under the log on a terminal.
    public func setStatus(_ text: String?) {
        guard live else { return }
        state.withLock { s in
            guard s.statusLine else { return }
            s.status = text
            var out = "\r\u{1B}[2K"
            if let text { out += "\u{1B}[2m" + String(text.prefix(terminalWidth() - 1)) + "\u{1B}[0m" }
            writeStandardError(out)
        }
    }

    /// Flushes and closes the log file.
    public func close() {
        setStatus(nil)
        state.withLock { s in
            try? s.file?.synchronize()
            try? s.file?.close()
            s.file = nil
        }
    }

    package static let debugToTerminal = ProcessInfo.processInfo.environment["VOUCH_DEBUG"].map { !$0.isEmpty && $0 != "0" } ?? false

    package static func seconds(since start: ContinuousClock.Instant) -> String {
        let d = ContinuousClock.now - start
        let s = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        return String(format: "%.2f seconds", s)
    }

    // MARK: - Rendering

    enum Style { case plain, header, footer, serial, warning, error, debug }

    private func write(_ message: String, machine: String?, style: Style) {
        let d = ContinuousClock.now - start
        let elapsed = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
        let indent = String(repeating: "  ", count: TestLog.depth)
        let separator = style == .serial ? " # " : ": "
        let prefix = machine.map { $0 + separator } ?? ""
        let time = String(format: "%8.2f ", elapsed)
        let lines = message.split(separator: "\n", omittingEmptySubsequences: false)
        state.withLock { s in
            var plain = ""
            var fancy = ""
            for line in lines {
                plain += time + indent + prefix + line + "\n"
                fancy += colored(time, "2") + indent + (machine.map { colored($0, Self.machineColor($0)) + separator } ?? "")
                    + styled(String(line), style) + "\n"
            }
            if let data = plain.data(using: .utf8) { try? s.file?.write(contentsOf: data) }
            guard !quiet, style != .debug || Self.debugToTerminal, style != .serial || s.serialOnTerminal else { return }
            var out = live && s.status != nil ? "\r\u{1B}[2K" : ""
            out += color ? fancy : plain
            if live, let status = s.status {
                out += "\u{1B}[2m" + String(status.prefix(terminalWidth() - 1)) + "\u{1B}[0m"
            }
            writeStandardError(out)
        }
    }

    private func styled(_ text: String, _ style: Style) -> String {
        switch style {
        case .plain: text
        case .header: colored(text, "1")
        case .footer, .debug: colored(text, "2")
        case .serial: colored(text, "2")
        case .warning: colored(text, "33")
        case .error: colored(text, "1;31")
        }
    }

    private func colored(_ text: String, _ code: String) -> String {
        color ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }

    private static func machineColor(_ name: String) -> String {
        let palette = ["36", "35", "34", "32", "96", "95", "94", "92"]
        let sum = name.unicodeScalars.reduce(0) { $0 &+ Int($1.value) }
        return palette[sum % palette.count]
    }

    private func terminalWidth() -> Int {
        var size = winsize()
        return ioctl(2, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 100
    }
}

/// Writes to fd 2 directly (C's `stderr` global is not concurrency-safe).
package func writeStandardError(_ text: String) {
    try? writeAllBlocking(fd: 2, Array(text.utf8))
}
