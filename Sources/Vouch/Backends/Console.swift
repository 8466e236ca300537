import Foundation
import Synchronization

/// A machine's serial console: split into lines, logged, and kept for
/// `getConsoleLog` and `waitForConsoleText`.
final class Console: Sendable {
    private struct State {
        var text = ""
        var partial: [UInt8] = []
        var version = 0
    }

    let machine: String
    private let log: TestLog
    private let state = Mutex(State())

    init(machine: String, log: TestLog) {
        self.machine = machine
        self.log = log
    }

    /// Adds bytes from the console; complete lines are logged.
    func feed(_ bytes: [UInt8]) {
        var lines: [String] = []
        state.withLock { s in
            s.partial.append(contentsOf: bytes)
            while let nl = s.partial.firstIndex(of: UInt8(ascii: "\n")) {
                var line = String(decoding: s.partial[..<nl], as: UTF8.self)
                s.partial.removeFirst(nl + 1)
                line.removeAll { $0 == "\r" }
                lines.append(line)
                s.text += line + "\n"
            }
            s.version += 1
        }
        lines.forEach { log.serial($0, machine: machine) }
    }

    /// Flushes an unterminated last line (e.g. when the process exits).
    func flush() {
        let line = state.withLock { s -> String? in
            guard !s.partial.isEmpty else { return nil }
            let line = String(decoding: s.partial, as: UTF8.self)
            s.partial.removeAll()
            s.text += line + "\n"
            return line
        }
        if let line { log.serial(line, machine: machine) }
    }

    /// Everything the console printed so far.
    var text: String { state.withLock { $0.text + String(decoding: $0.partial, as: UTF8.self) } }

    /// The last `lines` lines.
    func tail(lines: Int = 20) -> String { Vouch.tail(text, lines: lines) }

    /// The last kernel panic line the guest printed, if any (e.g.
    /// `Kernel panic - not syncing: VFS: Unable to mount root fs`).
    var panicLine: String? {
        text.split(separator: "\n").last { $0.contains("Kernel panic - not syncing") }
            .map { line in
                let s = String(line)
                return s.range(of: "Kernel panic").map { String(s[$0.lowerBound...]) } ?? s
            }
    }
}
