import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// `vouch repl` in a real terminal (tmux), typed at like a user would.
@Suite(.serialized)
struct ReplTests {
    /// A private tmux server with one window running `command`.
    struct Terminal {
        let server = "vouch-test-\(UUID().uuidString.prefix(8))"

        func tmux(_ args: [String]) async throws -> String {
            try await ChildProcess.run("tmux", ["-L", server] + args).output
        }

        func type(_ keys: String...) async throws { _ = try await tmux(["send-keys", "-t", "repl"] + keys) }

        func screen() async throws -> String { try await tmux(["capture-pane", "-t", "repl", "-p", "-S", "-200"]) }

        /// Waits until the screen shows `text`; fails with the screen otherwise.
        func waitFor(_ text: String, timeout: Double = 60, sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
            let end = ContinuousClock.now + .seconds(timeout)
            var last = ""
            while ContinuousClock.now < end {
                last = try await screen()
                if last.contains(text) { return }
                try await Task.sleep(for: .milliseconds(200))
            }
            Issue.record("the terminal never showed \(text.debugDescription); it shows:\n\(last)", sourceLocation: sourceLocation)
            throw CancellationError()
        }

        func kill() async { _ = try? await tmux(["kill-server"]) }
    }

    @Test func sessionWithShellInteractCtrlCAndCtrlD() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-repl-\(UUID().uuidString.prefix(8))")
        let tmp = dir.appendingPathComponent("tmp")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let spec = packageRoot.appendingPathComponent("Tests/Conformance/one-node.json").path
        let done = dir.appendingPathComponent("exit-status").path
        let terminal = Terminal()
        defer { Task { await terminal.kill() } }
        let command = "env -u XDG_RUNTIME_DIR TMPDIR=\(tmp.path) NO_COLOR=1 \(vouchBinary) repl \(spec) -o \(dir.path)/out; echo $? > \(done); sleep 300"
        _ = try await terminal.tmux(["new-session", "-d", "-s", "repl", "-x", "160", "-y", "50", command])

        try await terminal.waitFor(">>>")
        #expect(try await terminal.screen().contains("nothing is booted until you ask"))
        #expect(!FileManager.default.fileExists(atPath: done))

        // A command boots the machine on first use.
        try await terminal.type(#"solo.succeed("echo hi-$((40+2))")"#, "Enter")
        try await terminal.waitFor(#"'hi-42\n'"#, timeout: 120)

        // A real shell on the guest: ^C interrupts the guest command only.
        try await terminal.type("solo.shell_interact()", "Enter")
        try await terminal.waitFor("bash-", timeout: 30)
        try await terminal.type("sleep 100", "Enter")
        try await Task.sleep(for: .seconds(1))
        try await terminal.type("C-c")
        try await terminal.type("echo after-$((1+1))", "Enter")
        try await terminal.waitFor("after-2\n", timeout: 20)
        try await terminal.type("C-d")
        try await terminal.waitFor("interactive shell ended", timeout: 20)

        // The serial console, raw: keys reach a reader of ttyS0, its output shows.
        try await terminal.type(#"solo.succeed("(head -n1 /dev/ttyS0 > /tmp/got; echo serial-saw-$(cat /tmp/got) > /dev/ttyS0) >/dev/null 2>&1 &")"#, "Enter")
        try await terminal.waitFor(">>> ", timeout: 20)
        try await terminal.type("solo.console_interact()", "Enter")
        try await terminal.waitFor("Ctrl-D leaves", timeout: 20)
        try await terminal.type("typed-on-serial", "Enter")
        try await terminal.waitFor("serial-saw-typed-on-serial", timeout: 30)
        try await terminal.type("C-d")
        try await terminal.waitFor("serial console session ended", timeout: 20)

        // ^C at the prompt stops the call in progress, in the guest too.
        try await terminal.type(#"solo.succeed("sleep 100")"#, "Enter")
        try await Task.sleep(for: .seconds(1.5))
        try await terminal.type("C-c")
        try await terminal.waitFor("KeyboardInterrupt", timeout: 20)
        try await terminal.type(#"solo.succeed("echo fine")"#, "Enter")
        try await terminal.waitFor(#"'fine\n'"#, timeout: 20)

        // Ctrl-D ends the session and tears everything down.
        #expect(!processes(mentioning: "-m vouch_driver repl").isEmpty)
        #expect(!processes(mentioning: tmp.path + "/vouch-").isEmpty)
        try await terminal.type("C-d")
        let end = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: done), ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(200))
        }
        let status = (try? String(contentsOfFile: done, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        let finalScreen = try await terminal.screen()
        #expect(status == "0", "\(finalScreen)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: tmp.path).isEmpty, "the session left files in its TMPDIR")
        #expect(processes(mentioning: tmp.path + "/vouch-").isEmpty, "machines of the session were left behind")
        #expect(processes(mentioning: "-m vouch_driver repl").isEmpty, "the Python interpreter was left behind")
    }
}
