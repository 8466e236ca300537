import Foundation
import Glibc
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// `GuestShell` over a real pty, set up like NixOS's backdoor (see `PTYShellBackend`).
@Suite struct GuestShellTests {
    // MARK: Binary safety

    @Test func outputIsReturnedByteForByte() async throws {
        try await withFakeShell { shell, _ in
            let cases: [(String, [UInt8])] = [
                ("printf 'a\\0b\\0'", [0x61, 0, 0x62, 0]),
                ("printf '\\377\\376\\303(\\355\\240\\200'", [0xFF, 0xFE, 0xC3, 0x28, 0xED, 0xA0, 0x80]),
                ("printf abc", Array("abc".utf8)),
                ("printf 'crlf\\r\\n\\rcr'", Array("crlf\r\n\rcr".utf8)),
                ("printf '\\036VOUCH:'", [0x1E] + Array("VOUCH:".utf8)),
                ("printf '\\036VOUCH:deadbeef-1:0\\nafter'", [0x1E] + Array("VOUCH:deadbeef-1:0\nafter".utf8)),
                ("printf '\\036VOUCH:%s:0\\n' \"${2-}\"; echo x", [0x1E] + Array("VOUCH::0\nx\n".utf8)),
                ("printf '\\003\\034\\004\\032\\177'", [0x03, 0x1C, 0x04, 0x1A, 0x7F]),
                ("true", []),
            ]
            for (command, expected) in cases {
                let r = try await shell.run(command, timeout: 10)
                #expect(r.status == 0, "\(command)")
                #expect(r.output == expected, "\(command)")
            }
            // Every byte value, in order.
            let all = try await shell.run("for i in $(seq 0 255); do printf \"\\\\$(printf %03o $i)\"; done", timeout: 10)
            #expect(all.output == (0...255).map { UInt8($0) })
            #expect(try await shell.run("echo still in sync", timeout: 10).text == "still in sync\n")
        }
    }

    /// Command text with tty control characters and quotes arrives literally.
    @Test func commandTextIsNotInterpretedByTheTerminal() async throws {
        try await withFakeShell { shell, _ in
            for text in ["\u{03}\u{1C}\u{04}\u{1A}\u{15}\u{17}\u{16}\u{7F}\u{11}\u{13}", "it's \"$HOME\" `id` \\n \\", "line1\nline2\r\n", "héllo €😀"] {
                let r = try await shell.run("printf '%s' \(shellQuote(text))", timeout: 10)
                #expect(r.status == 0)
                #expect(r.output == Array(text.utf8), "\(text.debugDescription)")
            }
        }
    }

    /// A command far longer than the tty's 4 KiB input buffer is not truncated.
    @Test func longCommandLine() async throws {
        try await withFakeShell { shell, _ in
            let payload = String(repeating: "0123456789abcdef", count: 8192)  // 128 KiB
            let r = try await shell.run("printf '%s' '\(payload)' | wc -c", timeout: 20)
            #expect(r.status == 0)
            #expect(r.text.trimmingCharacters(in: .whitespacesAndNewlines) == "\(payload.utf8.count)")
        }
    }

    /// Input typed on the terminal after the command reaches a command that
    /// reads it from /dev/tty, and the next command starts in sync.
    @Test func inputTypedOnTheTerminal() async throws {
        try await withFakeShell { shell, _ in
            let data = Array(String(repeating: "QUJD+/9=", count: 40_000).utf8)  // 320 KB of base64 text
            let r = try await shell.run("head -c \(data.count) </dev/tty", input: data, until: Deadline(seconds: 30))
            #expect(r.status == 0)
            #expect(r.output == data)
            #expect(try await shell.run("echo next", timeout: 10).text == "next\n")
            let e = await #expect(throws: VouchError.self) { _ = try await shell.run("true", input: [0x03], until: Deadline(seconds: 5)) }
            #expect(e?.kind == .invalidSpec)
        }
    }

    @Test func fiftyMegabytesOfRandomOutput() async throws {
        try await withFakeShell { shell, _ in
            let size = 50_000_000
            let guestFile = "/tmp/big-\(UUID().uuidString)"
            let sum = try await shell.run("head -c \(size) /dev/urandom > \(guestFile); sha256sum < \(guestFile)", timeout: 60)
            #expect(sum.status == 0)
            let r = try await shell.run("cat \(guestFile); rm \(guestFile)", timeout: 60)
            #expect(r.status == 0)
            #expect(r.output.count == size)
            // Checksum of what arrived, computed by the host's sha256sum.
            let dir = makeTempDirectory()
            defer { removeTree(dir) }
            try Data(r.output).write(to: URL(fileURLWithPath: dir + "/received"))
            let (status, hostSum) = try await runHost("sha256sum", [dir + "/received"])
            #expect(status == .exited(0))
            let guestHash = sum.text.split(separator: " ").first.map(String.init)
            let hostHash = String(decoding: hostSum, as: UTF8.self).split(separator: " ").first.map(String.init)
            #expect(guestHash != nil && guestHash?.count == 64)
            #expect(guestHash == hostHash)
            #expect(try await shell.run("echo after", timeout: 10).text == "after\n")
        }
    }

    // MARK: Exit statuses and isolation of commands

    @Test func exitStatuses() async throws {
        try await withFakeShell { shell, _ in
            let cases: [(String, Int32, String)] = [
                ("true", 0, ""),
                ("false", 1, ""),
                ("exit 42", 42, ""),
                ("echo before; exit 3", 3, "before\n"),
                ("{ echo a; false; echo b; }", 1, "a\n"),
                ("if true; then echo in; false; echo not; fi", 1, "in\n"),
                ("echo x; false; echo unreachable", 1, "x\n"),
                ("false | true", 1, ""),
                ("true | false | true", 1, ""),
                ("echo ${VOUCH_UNSET_VARIABLE}", 1, ""),
                ("sh -c 'kill -TERM $$'", 143, ""),
                ("false || echo handled", 0, "handled\n"),
            ]
            for (command, status, output) in cases {
                let r = try await shell.run(command, timeout: 10)
                #expect(r.status == status, "\(command): \(r.text)")
                #expect(r.text == output, "\(command)")
            }
        }
    }

    @Test func stdinIsDevNull() async throws {
        try await withFakeShell { shell, _ in
            var r: CommandResult?
            let seconds = try await elapsed { r = try await shell.run("cat; echo done", timeout: 5) }
            #expect(r?.text == "done\n")
            #expect(seconds < 2)
            #expect(try await shell.run("readlink /proc/self/fd/0", timeout: 5).text == "/dev/null\n")
            #expect(try await shell.run("read line", timeout: 5).status == 1)
        }
    }

    @Test func commandsDoNotAffectEachOther() async throws {
        try await withFakeShell { shell, _ in
            let home = try await shell.run("pwd", timeout: 5).text
            #expect(try await shell.run("cd / && pwd", timeout: 5).text == "/\n")
            #expect(try await shell.run("pwd", timeout: 5).text == home)
            _ = try await shell.run("export VOUCH_X=1; set +e; shopt -s nullglob; exec 2>/dev/null", timeout: 5)
            #expect(try await shell.run("echo ${VOUCH_X:-unset}", timeout: 5).text == "unset\n")
            #expect(try await shell.run("false; echo not reached", timeout: 5).status == 1)
        }
    }

    // MARK: Deadlines and recovery

    @Test func timeoutInterruptsAndTheShellStaysInSync() async throws {
        try await withFakeShell { shell, _ in
            for i in 0..<20 {
                var error: VouchError?
                let seconds = await elapsed {
                    error = await expectVouchError(.timeout) {
                        _ = try await shell.run("echo partial-\(i); sleep 30; echo never", timeout: 0.4)
                    }
                }
                #expect(error?.message.contains("timed out after 0.4 s") == true)
                #expect(error?.message.contains("shell is ready again") == true, "\(String(describing: error))")
                #expect(error?.command?.contains("sleep 30") == true)
                #expect(error?.outputTail?.contains("partial-\(i)") == true)
                // ^C worked at once: no 3 s fallback wait.
                #expect(seconds < 2.5, "timeout \(i) took \(seconds) s")
                let r = try await shell.run("echo ok-\(i)", timeout: 5)
                #expect(r.status == 0)
                #expect(r.text == "ok-\(i)\n")
            }
        }
    }

    /// A caller that gives up (Ctrl-C in a session) stops the guest command
    /// too, so the next command answers at once instead of queueing behind it.
    @Test func cancelledCommandIsInterruptedInTheGuest() async throws {
        try await withFakeShell { shell, _ in
            let call = Task { try await shell.run("sleep 61.2345; echo never", timeout: 120) }
            try await Task.sleep(for: .milliseconds(300))
            call.cancel()
            let cancelled = await #expect(throws: VouchError.self) { try await call.value }
            #expect(cancelled?.kind == .cancelled)
            let r = try await shell.run("echo next", timeout: 10)
            #expect(r.text == "next\n")
            #expect(try await shell.run("pgrep -f '[s]leep 61.2345' || echo none", timeout: 10).text == "none\n")
        }
    }

    /// `trap '' INT` makes both ^C useless; the ^\ that follows (SIGQUIT,
    /// default action in the command's subshell) ends it, and the shell is
    /// usable again, after the two 3 s grace periods.
    @Test func commandIgnoringSIGINTIsEndedByQuit() async throws {
        try await withFakeShell { shell, _ in
            let error = await expectVouchError(.timeout) {
                _ = try await shell.run("trap '' INT; sleep 30", timeout: 0.3)
            }
            #expect(error?.message.contains("interrupted; the shell is ready again") == true, "\(String(describing: error))")
            let next = try await shell.run("echo alive", timeout: 5)
            #expect(next.text == "alive\n")
        }
    }

    /// A command that ignores ^C and ^\ cannot be stopped: the shell is lost,
    /// and every later command fails at once with a clear error instead of
    /// reading stale output.
    @Test func commandIgnoringAllInterruptsLosesTheShell() async throws {
        try await withFakeShell { shell, _ in
            let error = await expectVouchError(.timeout) {
                _ = try await shell.run("trap '' INT QUIT; sleep 60", timeout: 0.3)
            }
            #expect(error?.message.contains("could not be recovered") == true, "\(String(describing: error))")
            let next = await expectVouchError(.protocolError) {
                _ = try await shell.run("echo hi", timeout: 5)
            }
            #expect(next?.message.contains("the guest shell is unusable") == true)
            #expect(next?.command == "echo hi")
        }
    }

    // MARK: The guest going away

    @Test func crashDuringACommandIsMachineDown() async throws {
        try await withFakeShell { shell, backend in
            let running = Task { try await shell.run("echo started; sleep 30", timeout: 60) }
            try await Task.sleep(for: .milliseconds(300))
            try await backend.crash()
            let error = await expectVouchError(.machineDown) { _ = try await running.value }
            #expect(error?.message.contains("closed") == true)
            #expect(backend.exitStatus == .signaled(SIGKILL))
            _ = await expectVouchError(.machineDown) { _ = try await shell.run("true", timeout: 5) }
        }
    }

    @Test func backdoorShellKilledFromInsideIsMachineDown() async throws {
        try await withFakeShell { shell, backend in
            _ = await expectVouchError(.machineDown) { _ = try await shell.run("kill -9 $$; sleep 5", timeout: 20) }
            let status = try await within(seconds: 5) { try await backend.waitForExit() }
            #expect(status == .signaled(SIGKILL))
        }
    }

    // MARK: Connecting

    @Test func garbageBeforeTheBannerIsSkipped() async throws {
        let noise = "BIOS noise\r\nSpawning backdoor\u{1E}VOUCH:x-1:0\n\u{1E}VOUCH:\n" + "Spawning backdoor root shell.."
        try await withFakeShell(options: .init(preamble: Array(noise.utf8), bootDelay: 0.3)) { shell, _ in
            let r = try await shell.run("echo first", timeout: 5)
            #expect(r.status == 0)
            #expect(r.text == "first\n")
        }
    }

    @Test func stderrGoesToTheConsoleNotTheOutput() async throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let context = makeContext(in: dir)
        let backend = PTYShellBackend(context: context)
        let shell = GuestShell(machine: "guest", channel: try await backend.start())
        try await within(seconds: 10) { try await shell.connect() }
        let r = try await shell.run("echo out; echo err-line >&2", timeout: 5)
        #expect(r.text == "out\n")
        try await retry(timeout: 5) { try assertContains(context.console.recentText, "err-line") }
        await backend.stop(keepState: false)
        #expect(!FileManager.default.fileExists(atPath: context.stateDirectory))
    }

    @Test func concurrentCommandsAreSerialised() async throws {
        try await withFakeShell { shell, _ in
            try await withThrowingTaskGroup(of: (Int, CommandResult).self) { group in
                for i in 0..<16 {
                    group.addTask {
                        (i, try await shell.run("echo begin-\(i); sleep 0.0\(i % 5); echo end-\(i); exit \(i)", timeout: 20))
                    }
                }
                var seen = Set<Int>()
                for try await (i, r) in group {
                    #expect(r.text == "begin-\(i)\nend-\(i)\n")
                    #expect(r.status == Int32(i))
                    seen.insert(i)
                }
                #expect(seen.count == 16)
            }
        }
    }
}

/// A scripted backdoor on a plain `ByteQueue`: answers each framed command
/// after `delay` seconds, or at once with status 130 when it gets ^C/^\ first.
/// It lets tests put a command's answer exactly at its deadline.
final class ScriptedGuest: Sendable {
    let input = ByteQueue()
    private let pending = Locked<String?>(nil)
    let delay: @Sendable () -> Double

    init(delay: @escaping @Sendable () -> Double) {
        self.delay = delay
        input.append(Array("Spawning backdoor root shell...\n".utf8))
    }

    var channel: GuestChannel {
        GuestChannel(input: input, send: { [self] bytes, _ in receive(bytes) }, close: { [input] in input.finish() })
    }

    private func answer(_ nonce: String, _ status: Int) {
        input.append([0x1E] + Array("VOUCH:\(nonce):\(status)\n".utf8))
    }

    private func receive(_ bytes: [UInt8]) {
        if bytes == ShellFraming.interrupt || bytes == ShellFraming.quit {
            if let nonce = pending.value.withLock({ p -> String? in defer { p = nil }; return p }) { answer(nonce, 130) }
            return
        }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let nonce = text.split(separator: " ").last.map(String.init) else { return }
        if !text.hasPrefix("__vouch ") {  // the setup script
            answer(nonce, 0)
            return
        }
        pending.value.withLock { $0 = nonce }
        DispatchQueue.global().asyncAfter(deadline: .now() + delay()) { [self] in
            let due = pending.value.withLock { p -> Bool in
                guard p == nonce else { return false }
                p = nil
                return true
            }
            if due { answer(nonce, 0) }
        }
    }
}

@Suite struct GuestShellDeadlineRaceTests {
    /// Answers that arrive right at the deadline are either returned or the
    /// command times out cleanly; the shell is never lost and never desyncs.
    @Test func answersAtTheDeadlineAreNeverLost() async throws {
        let timeout = 0.005
        let guest = ScriptedGuest(delay: { timeout + Double.random(in: -0.002...0.002) })
        let shell = GuestShell(machine: "scripted", channel: guest.channel)
        try await within(seconds: 5) { try await shell.connect() }
        var returned = 0, timedOut = 0
        for _ in 0..<300 {
            do {
                let r = try await shell.run("x", timeout: timeout)
                #expect(r.status == 0)
                returned += 1
            } catch {
                #expect(error.kind == .timeout)
                #expect(error.message.contains("ready again"), "\(error)")
                timedOut += 1
                if error.kind != .timeout { break }
            }
        }
        #expect(returned + timedOut == 300)
    }
}
