import Foundation

/// The result of one command in the guest.
public struct CommandResult: Sendable {
    /// The command's exit status.
    public var status: Int32
    /// Its standard output, byte for byte.
    public var output: [UInt8]

    /// The output as text (invalid UTF-8 is replaced, not dropped).
    public var text: String { String(decoding: output, as: UTF8.self) }
}

/// Drives a NixOS-style backdoor root shell over a `GuestChannel`.
///
/// Commands are serialised: concurrent callers queue up. Each command has a
/// host-side deadline; when it passes, the command is interrupted and the
/// shell is brought back in sync before the timeout error is thrown, so the
/// next command works. If the shell cannot be recovered it is marked lost and
/// every later command fails with that reason instead of reading stale bytes.
actor GuestShell {
    let machine: String
    private let channel: GuestChannel
    private var buffer: [UInt8] = []
    private let session = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    private var counter = 0
    private var lost: String?
    private var busy = false
    private var queue: [CheckedContinuation<Void, Never>] = []
    /// The last answer `readAnswer` took out of `buffer`. If a deadline fires
    /// just as the answer arrives, `withDeadline` drops the result; `run`
    /// finds it here instead of waiting for a marker that was already consumed.
    private var answered: (nonce: String, result: CommandResult)?

    init(machine: String, channel: GuestChannel) {
        self.machine = machine
        self.channel = channel
    }

    /// Waits for the backdoor banner, then installs the framing.
    /// - Throws: `VouchError` (`machineDown` if the stream ends first), or
    ///   `CancellationError` when the caller's deadline cancels the wait.
    func connect() async throws {
        try await lock()
        defer { unlock() }
        try await readUntilBanner()
        let nonce = nextNonce()
        try send(ShellFraming.setupScript(nonce: nonce))
        _ = try await readAnswer(nonce: nonce)
        lost = nil
    }

    /// Runs `command`, returning its status and raw stdout.
    /// - Throws: `VouchError.timeout` after `timeout` seconds (the command was
    ///   interrupted; the shell is usable again), `machineDown` when the guest
    ///   goes away, `protocolError` when the shell was lost earlier.
    func run(_ command: String, timeout: Double) async throws -> CommandResult {
        try await lock()
        defer { unlock() }
        if let lost {
            throw VouchError(.protocolError, "the guest shell is unusable: \(lost)", machine: machine, command: command)
        }
        guard !command.utf8.contains(0) else {
            // bash would silently cut the command at the NUL.
            throw VouchError(.other, "a command cannot contain a NUL byte", machine: machine, command: command)
        }
        let nonce = nextNonce()
        defer { answered = nil }
        try send(ShellFraming.commandLine(command, nonce: nonce))
        do {
            return try await withDeadline(seconds: timeout) { try await self.readAnswer(nonce: nonce) }
        } catch is CancellationError {
            // The caller gave up (Ctrl-C in a session, a failed sibling): stop
            // the command too, or the next one would wait behind it. Recovery
            // runs in its own task because this one is cancelled.
            if answered?.nonce != nonce {
                _ = await Task { await self.recover(nonce: nonce, patience: 1) }.value
            }
            throw CancellationError()
        } catch is DeadlineExceeded {
            // The command finished at the deadline: its answer is complete.
            if let answered, answered.nonce == nonce { return answered.result }
            let seen = String(decoding: buffer.suffix(4000), as: UTF8.self)
            let recovered = await recover(nonce: nonce)
            var message = "command timed out after \(formatSeconds(timeout))"
            message += recovered ? " (interrupted; the shell is ready again)" : " and the shell could not be recovered"
            throw VouchError(.timeout, message, machine: machine, command: command, outputTail: tail(seen))
        }
    }

    /// Runs `command` with the nixpkgs Python driver's two-step framing
    /// (PROTOCOLS.md §2): `timeout`, `bash -c` and `base64` in the guest, then
    /// a second round trip for the status. Only for comparison benchmarks.
    func runTwoStep(_ command: String, timeout: Double) async throws -> CommandResult {
        try await lock()
        defer { unlock() }
        let script = "timeout \(Int(timeout)) bash -c \(shellQuote("set -euo pipefail; " + command)) | (base64 -w 0; echo)\n"
        try send(Array(script.utf8))
        let encoded = try await withDeadline(seconds: timeout + 5) { try await self.readLine() }
        try send(Array("echo ${PIPESTATUS[0]}\n".utf8))
        let status = try await withDeadline(seconds: 10) { try await self.readLine() }
        let output = Data(base64Encoded: String(decoding: encoded, as: UTF8.self)).map { Array($0) } ?? []
        return CommandResult(status: Int32(String(decoding: status, as: UTF8.self)) ?? -1, output: output)
    }

    private func readLine() async throws -> [UInt8] {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeFirst(newline + 1)
                return line
            }
            try await receive()
        }
    }

    /// Sends a line the shell runs without framing (e.g. `poweroff`), for
    /// commands after which no answer can come.
    func sendUnframed(_ line: String) async throws {
        try await lock()
        defer { unlock() }
        try send(Array((line + "\n").utf8))
    }

    /// Runs an interactive `bash -i` on the guest's console and relays bytes
    /// between it and a user until it exits; the framing is then set up again.
    /// The guest console is a tty in cooked mode meanwhile, so a ^C the user
    /// types interrupts the guest command, not the session.
    /// - Throws: `VouchError.machineDown` if the guest goes away,
    ///   `.protocolError` if the framing cannot be restored after the user left.
    func interact(input: ByteQueue, output: @escaping @Sendable ([UInt8]) -> Void) async throws {
        try await lock()
        defer { unlock() }
        if let lost { throw VouchError(.protocolError, "the guest shell is unusable: \(lost)", machine: machine) }
        let nonce = nextNonce()
        try send(Array("stty sane 2>/dev/null; bash -i 2>&1; stty raw -echo 2>/dev/null; ".utf8)
            + ShellFraming.setupScript(nonce: nonce))
        let channel = self.channel
        let relay = Task {
            while let bytes = try? await input.next() { try? channel.send(bytes) }
            guard !Task.isCancelled else { return }
            // The user went away: end the guest shell so the framing comes back.
            try? channel.send(ShellFraming.interrupt + Array("\nexit\n".utf8))
        }
        defer { relay.cancel() }
        var scan = 0
        while true {
            let (match, next) = ShellFraming.findMarker(nonce: nonce, in: buffer, from: scan)
            let safe = match?.outputEnd ?? next
            if safe > 0 { output(Array(buffer[..<safe])) }
            if let match {
                buffer.removeFirst(match.end)
                return
            }
            buffer.removeFirst(safe)
            scan = 0
            try await receive()
        }
    }

    /// Forgets the current session and waits for a new banner (after a reboot).
    func reconnect() async throws {
        buffer.removeAll()
        lost = nil
        try await connect()
    }

    /// Takes over a shell that is already running, framing installed (a
    /// restored snapshot): no banner comes, so a marker-only line proves the
    /// channel works. It is a shell builtin: nothing is spawned in the guest.
    /// - Throws: `VouchError` as `connect()`.
    func resume() async throws {
        try await lock()
        defer { unlock() }
        let nonce = nextNonce()
        try send(Array("printf '\\036VOUCH:%s:0\\n' \(nonce)\n".utf8))
        _ = try await readAnswer(nonce: nonce)
        lost = nil
    }

    /// Holds the shell between commands, e.g. while the guest is snapshotted:
    /// no command is half-sent or half-answered until `release()`.
    func acquire() async throws { try await lock() }

    /// Ends `acquire()`.
    func release() { unlock() }

    /// Marks the shell unusable with `reason`.
    func markLost(_ reason: String) {
        lost = reason
    }

    // MARK: - Internals

    private func nextNonce() -> String {
        counter += 1
        return "\(session)-\(counter)"
    }

    private func send(_ bytes: [UInt8]) throws {
        do {
            try channel.send(bytes)
        } catch {
            throw VouchError(.machineDown, "cannot write to the guest shell: \(error)", machine: machine)
        }
    }

    /// Appends the next chunk from the guest to `buffer`.
    private func receive() async throws {
        let chunk: [UInt8]?
        do {
            chunk = try await channel.input.next()
        } catch let error as SystemError {
            throw VouchError(.machineDown, "reading the guest shell failed: \(error)", machine: machine,
                             outputTail: tail(String(decoding: buffer.suffix(4000), as: UTF8.self)))
        }
        guard let chunk else {
            throw VouchError(.machineDown, "the guest shell connection closed", machine: machine,
                             outputTail: tail(String(decoding: buffer.suffix(4000), as: UTF8.self)))
        }
        buffer.append(contentsOf: chunk)
    }

    private func readAnswer(nonce: String) async throws -> CommandResult {
        var scan = 0
        while true {
            let (match, next) = ShellFraming.findMarker(nonce: nonce, in: buffer, from: scan)
            if let match {
                let result = CommandResult(status: match.status, output: Array(buffer[..<match.outputEnd]))
                buffer.removeFirst(match.end)
                answered = (nonce, result)
                return result
            }
            scan = next
            try await receive()
        }
    }

    private func readUntilBanner() async throws {
        while true {
            if let range = firstRange(of: ShellFraming.banner, in: buffer) {
                var end = range.upperBound
                while end < buffer.count, buffer[end] == UInt8(ascii: "\r") || buffer[end] == UInt8(ascii: "\n") {
                    end += 1
                }
                buffer.removeFirst(end)
                return
            }
            // Keep only what could be the start of a banner split across reads.
            if buffer.count > ShellFraming.banner.count { buffer.removeFirst(buffer.count - ShellFraming.banner.count) }
            try await receive()
        }
    }

    /// Interrupts the running command and reads up to its marker, waiting
    /// `patience` seconds after each of ^C, ^C and ^\\.
    private func recover(nonce: String, patience: Double = 3) async -> Bool {
        for signal in [ShellFraming.interrupt, ShellFraming.interrupt, ShellFraming.quit] {
            guard (try? send(signal)) != nil else { break }
            if (try? await withDeadline(seconds: patience, { try await self.readAnswer(nonce: nonce) })) != nil
                || answered?.nonce == nonce
            {
                return true
            }
        }
        lost = "a command timed out and could not be interrupted"
        return false
    }

    private func lock() async throws {
        if !busy {
            busy = true
            return
        }
        await withCheckedContinuation { queue.append($0) }
        // Ownership was handed over by unlock(); honour cancellation after taking it.
        if Task.isCancelled {
            unlock()
            throw CancellationError()
        }
    }

    private func unlock() {
        if queue.isEmpty {
            busy = false
        } else {
            queue.removeFirst().resume()
        }
    }
}

func firstRange(of needle: [UInt8], in haystack: [UInt8]) -> Range<Int>? {
    guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
    var i = 0
    while let start = haystack[i...].firstIndex(of: needle[0]) {
        if haystack.count - start < needle.count { return nil }
        if haystack[start..<start + needle.count].elementsEqual(needle) { return start..<start + needle.count }
        i = start + 1
    }
    return nil
}

func formatSeconds(_ s: Double) -> String {
    if s == s.rounded() { return "\(Int(s)) s" }
    return String(format: s < 0.1 ? "%.2f s" : "%.1f s", s)
}
