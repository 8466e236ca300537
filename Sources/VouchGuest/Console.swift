import Foundation
import Synchronization
import VouchSupport

/// A machine's serial console: written byte for byte to its console log
/// file, split into lines for the test log, and kept in memory only as a
/// bounded window of recent text (for tails, panics and console waits).
///
/// A guest may print gigabytes: memory stays at `window` bytes, and each
/// byte is scanned once when split into lines and once by each console
/// wait that is running.
package final class Console: Sendable {
    package let machine: String
    private let log: TestLog
    /// The console log file (every byte the console printed), if any.
    package let logFile: URL?
    /// How much recent text stays in memory.
    package let window: Int

    private struct State {
        var file: FileHandle?
        var splitter = LineSplitter()
        /// Recent complete lines (with their newlines), at most ~2 × window bytes.
        var recent: [UInt8] = []
        /// Offset in the console's whole output of `recent[0]`.
        var recentStart = 0
        /// Bytes of complete lines so far.
        var total = 0
        /// Bytes written to the log file so far, and where the current boot began in it.
        var written: UInt64 = 0
        var bootStart: UInt64 = 0
    }

    private let state = Mutex(State())

    /// A console logging to `log` and writing everything to `file` (created anew).
    package init(machine: String, log: TestLog, file: URL? = nil, window: Int = 1 << 20) {
        self.machine = machine
        self.log = log
        self.logFile = file
        self.window = window
        var handle: FileHandle?
        if let file {
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
            handle = FileHandle(forWritingAtPath: file.path)
        }
        state.withLock { $0.file = handle }
    }

    /// Adds bytes from the console; complete lines are logged.
    package func feed(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let lines = state.withLock { s -> [Substring] in
            try? s.file?.write(contentsOf: bytes)
            s.written += UInt64(bytes.count)
            s.splitter.append(bytes)
            var lines: [Substring] = []
            while let line = s.splitter.next() {
                let text = String(decoding: line, as: UTF8.self)
                lines.append(Substring(text.contains("\r") ? text.replacingOccurrences(of: "\r", with: "") : text))
                s.recent.append(contentsOf: line)
                s.recent.append(UInt8(ascii: "\n"))
                s.total += line.count + 1
            }
            if s.recent.count > 2 * window {
                let drop = s.recent.count - window
                s.recent.removeFirst(drop)
                s.recentStart += drop
            }
            return lines
        }
        log.serial(lines: lines, machine: machine)
    }

    /// Flushes an unterminated last line (e.g. when the process exits).
    package func flush() {
        let line = state.withLock { s -> String? in
            let rest = Array(s.splitter.remainder)
            guard !rest.isEmpty else { return nil }
            s.splitter.reset()
            s.recent.append(contentsOf: rest + [UInt8(ascii: "\n")])
            s.total += rest.count + 1
            return String(decoding: rest, as: UTF8.self)
        }
        if let line { log.serial(line, machine: machine) }
    }

    /// Where the console's output ends now (bytes of complete lines so far).
    package var end: Int { state.withLock { $0.total } }

    /// The recent complete lines from offset `from` on (or from the oldest
    /// text still in memory, if that is later), and the offsets they span.
    /// With `partialLine`, an unterminated last line is appended.
    package func text(from: Int, partialLine: Bool = false) -> (text: String, start: Int, end: Int) {
        state.withLock { s in
            let start = min(max(from, s.recentStart), s.total)
            let text = String(decoding: s.recent[(start - s.recentStart)...], as: UTF8.self)
            return (partialLine ? text + String(decoding: s.splitter.remainder, as: UTF8.self) : text, start, s.total)
        }
    }

    /// The output after the last complete line (a prompt, say), which the
    /// next complete line will start with.
    package var partialLine: String { state.withLock { String(decoding: $0.splitter.remainder, as: UTF8.self) } }

    /// The recent text still in memory (at most about `window` bytes),
    /// including an unterminated last line.
    package var recentText: String { text(from: 0, partialLine: true).text }

    /// Marks where the machine's current boot begins (`sinceBoot`).
    package func markBoot() {
        state.withLock { $0.bootStart = $0.written }
    }

    /// Everything the console printed: the log file if there is one, else
    /// what is still in memory.
    package var fullText: String { text(fromFileOffset: 0) }

    /// What the console printed since the current boot began (nixpkgs'
    /// `get_console_log`: a new start begins a new log).
    package var sinceBoot: String { text(fromFileOffset: state.withLock { $0.bootStart }) }

    private func text(fromFileOffset offset: UInt64) -> String {
        if let logFile, let handle = FileHandle(forReadingAtPath: logFile.path) {
            defer { try? handle.close() }
            if (try? handle.seek(toOffset: offset)) != nil, let data = try? handle.readToEnd() {
                return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\r", with: "")
            }
        }
        return recentText
    }

    /// The last `lines` lines.
    package func tail(lines: Int = 20) -> String {
        let recent = state.withLock { s in String(decoding: s.recent.suffix(16384), as: UTF8.self) + String(decoding: s.splitter.remainder, as: UTF8.self) }
        return VouchSupport.tail(recent, lines: lines)
    }

    /// The last kernel panic line the guest printed, if any (e.g.
    /// `Kernel panic - not syncing: VFS: Unable to mount root fs`).
    package var panicLine: String? {
        recentText.split(separator: "\n").last { $0.contains("Kernel panic - not syncing") }
            .map { line in
                let s = String(line)
                return s.range(of: "Kernel panic").map { String(s[$0.lowerBound...]) } ?? s
            }
    }

    /// Copies everything `queue` delivers into the console until the stream
    /// ends (flushing a last partial line), passing each chunk to `also` first.
    package func pump(_ queue: ByteQueue, also: (@Sendable ([UInt8]) -> Void)? = nil) -> Task<Void, Never> {
        Task {
            while let chunk = try? await queue.next() {
                also?(chunk)
                self.feed(chunk)
            }
            self.flush()
        }
    }

    /// Closes the log file.
    package func close() {
        state.withLock { s in
            try? s.file?.close()
            s.file = nil
        }
    }
}
