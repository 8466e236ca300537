import Foundation
import VouchSupport
import Glibc
import Synchronization

/// The nixpkgs `run-NAME-nspawn` contract: what the driver hands the start
/// script and what it reads back from the script's stdout.
///
/// The script gets the machine's state and shared directories in its
/// environment, prints `systemd-nspawn's PID is N`, then the container's
/// console; a line saying the boot finished (or NixOS's stage-2 greeting)
/// means the container is up.
enum NspawnStartScript {
    /// The script's environment: the driver's own plus the two directories.
    static func environment(base: [String: String], stateDirectory: String, sharedDirectory: String) -> [String: String] {
        var env = base
        env["RUN_NSPAWN_ROOT_DIR"] = stateDirectory
        env["RUN_NSPAWN_SHARED_DIR"] = sharedDirectory
        return env
    }

    /// A console line without the pty's carriage returns and colour codes,
    /// so the markers match however the console was rendered.
    static func clean(_ line: Substring) -> String {
        var text = String(line.filter { $0 != "\r" })
        while let escape = text.range(of: "\u{1B}[") {
            let rest = text[escape.upperBound...]
            guard let end = rest.firstIndex(where: { $0.isLetter }) else { break }
            text.removeSubrange(escape.lowerBound...end)
        }
        return text.trimmingCharacters(in: .whitespaces)
    }

    /// N of a `systemd-nspawn's PID is N` line (a pid as the script's own
    /// PID namespace sees it), else nil.
    static func nspawnPID(in line: String) -> pid_t? {
        let marker = "systemd-nspawn's PID is "
        guard let range = line.range(of: marker) else { return nil }
        return pid_t(line[range.upperBound...].trimmingCharacters(in: .whitespaces))
    }

    /// Whether `line` says the container has booted.
    static func isReady(_ line: String) -> Bool {
        line.hasPrefix("systemd[1]: Startup finished in") || line.contains("Welcome to NixOS")
    }
}

/// Reads the start script's stdout as it arrives and remembers the
/// contract's markers; `feed` runs on the pump task, the backend polls.
final class StartScriptWatcher: Sendable {
    private struct State {
        var partial: [UInt8] = []
        var nspawnPID: pid_t?
        var ready = false
    }

    private let state = Mutex(State())

    /// The pid the script printed, once it has.
    var nspawnPID: pid_t? { state.withLock { $0.nspawnPID } }
    /// Whether a readiness line has been seen.
    var ready: Bool { state.withLock { $0.ready } }

    /// Forgets what an earlier run of the script printed (before a restart).
    func reset() {
        state.withLock { $0 = State() }
    }

    /// Takes the next chunk of stdout; only whole lines are examined.
    func feed(_ bytes: [UInt8]) {
        state.withLock { s in
            // Once booted, the rest of the console means nothing here.
            guard !s.ready else { return }
            s.partial.append(contentsOf: bytes)
            while let newline = s.partial.firstIndex(of: 0x0A) {
                let line = NspawnStartScript.clean(Substring(String(decoding: s.partial[..<newline], as: UTF8.self)))
                s.partial.removeSubrange(...newline)
                if s.nspawnPID == nil, let pid = NspawnStartScript.nspawnPID(in: line) { s.nspawnPID = pid }
                if NspawnStartScript.isReady(line) { s.ready = true }
            }
        }
    }
}
