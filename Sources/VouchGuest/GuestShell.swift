import Foundation
import VouchSupport

/// The result of one command in the guest.
public struct CommandResult: Sendable {
    /// The command's exit status.
    public var status: Int32
    /// Its standard output, byte for byte.
    public var output: [UInt8]
    /// Whether the answer waited for processes the command left running
    /// with its stdout open (nixpkgs' semantics; Vouch logs a warning).
    public var waitedForLeftovers = false

    /// A result with this status and output.
    public init(status: Int32, output: [UInt8], waitedForLeftovers: Bool = false) {
        self.status = status
        self.output = output
        self.waitedForLeftovers = waitedForLeftovers
    }

    /// The output as text (invalid UTF-8 is replaced, not dropped).
    public var text: String { String(decoding: output, as: UTF8.self) }
}

/// Drives a NixOS-style backdoor root shell over a `GuestChannel`.
///
/// Commands are serialised: concurrent callers queue up, and the time spent
/// queueing counts against each command's deadline. When a deadline passes
/// (or the caller is cancelled), the command is interrupted and the shell is
/// brought back in sync before the error is thrown, so the next command
/// works; recovery itself is bounded. If the shell cannot be recovered it is
/// marked lost and every later command fails with that reason instead of
/// reading stale bytes.
package actor GuestShell {
    package let machine: String
    private let channel: GuestChannel
    private var buffer = ByteBuffer()
    private let session = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    private var counter = 0
    private var lost: String?
    private let lock = AsyncLock()
    /// Whether the guest detects processes a command leaves behind (it
    /// could make a FIFO); false means a plain framing, as before Vouch did.
    package private(set) var detectsLeftovers = false

    /// How long recovery after a timeout may take in all.
    static let recoveryBudget = 4.0

    package init(machine: String, channel: GuestChannel) {
        self.machine = machine
        self.channel = channel
    }

    /// Waits for the backdoor banner, then installs the framing.
    /// - Throws: `.timeout` at the deadline, `.machineDown` if the stream
    ///   ends first (or the VMM reports a fault), `.cancelled`.
    package func connect(until deadline: Deadline) async throws(VouchError) {
        try await hold(until: deadline, for: "to connect")
        defer { lock.release() }
        try await readUntilBanner(until: deadline)
        let nonce = nextNonce()
        try await send(ShellFraming.setupScript(nonce: nonce), until: deadline)
        guard let answer = try await readAnswer(nonce: nonce, until: deadline) else {
            throw VouchError(.timeout, "the backdoor shell printed its banner but did not answer the setup", machine: machine,
                             outputTail: tail(buffer.suffixText(2000)))
        }
        detectsLeftovers = answer.flag == .fifo
        lost = nil
    }

    /// Runs `command`, returning its status and raw stdout.
    /// - Throws: `.timeout` at the deadline (the command was interrupted; the
    ///   shell is usable again unless the message says otherwise),
    ///   `.machineDown` when the guest goes away, `.protocolError` when the
    ///   shell was lost earlier, `.cancelled` (the command is interrupted too).
    ///
    /// `input` (printable ASCII and newlines only) is typed on the shell's
    /// terminal right after the command line, for a command that reads
    /// exactly that many bytes from `/dev/tty` (bash reads its own input a
    /// byte at a time, so data is far faster there than in the command).
    package func run(_ command: String, input: [UInt8] = [], until deadline: Deadline, plain: Bool = false) async throws(VouchError) -> CommandResult {
        guard input.allSatisfy({ (0x20...0x7E).contains($0) || $0 == 0x0A }) else {
            throw VouchError(.invalidSpec, "input typed on the guest's terminal must be printable ASCII", machine: machine, command: command)
        }
        if let lost {
            throw VouchError(.protocolError, "the guest shell is unusable: \(lost)", machine: machine, command: command)
        }
        guard !command.utf8.contains(0) else {
            // bash would silently cut the command at the NUL.
            throw VouchError(.invalidSpec, "a command cannot contain a NUL byte", machine: machine, command: command)
        }
        // The timeout the caller gave, for messages (the deadline was made just before).
        let budget = ((deadline.instant - ContinuousClock.now).seconds * 1000).rounded() / 1000
        try await hold(until: deadline, for: "to run `\(command)`", command: command)
        defer { lock.release() }
        let nonce = nextNonce()
        do throws(VouchError) {
            try await send(ShellFraming.commandLine(command, nonce: nonce, plain: plain) + input, until: deadline)
            if let answer = try await readAnswer(nonce: nonce, until: deadline) {
                return CommandResult(status: answer.status, output: answer.output, waitedForLeftovers: answer.flag == .waited)
            }
        } catch where error.kind == .cancelled {
            // The caller gave up (Ctrl-C in a session, a failed sibling): stop
            // the command too, or the next one would wait behind it. Recovery
            // runs in its own task because this one is cancelled.
            _ = await Task { await self.recover(nonce: nonce, patience: 1) }.value
            throw error.on(machine, command: command)
        } catch {
            throw error.on(machine, command: command)
        }
        let seen = buffer.suffixText(4000)
        let recovered = await recover(nonce: nonce)
        var message = "command timed out after \(formatSeconds(budget))"
        message += recovered ? " (interrupted; the shell is ready again)" : " and the shell could not be recovered"
        throw VouchError(.timeout, message, machine: machine, command: command, outputTail: tail(seen))
    }

    /// Runs `command` with the nixpkgs Python driver's two-step framing
    /// (PROTOCOLS.md §2): `timeout`, `bash -c` and `base64` in the guest, then
    /// a second round trip for the status. Only for comparison benchmarks.
    package func runTwoStep(_ command: String, until deadline: Deadline) async throws(VouchError) -> CommandResult {
        try await hold(until: deadline, for: "to run `\(command)`", command: command)
        defer { lock.release() }
        let script = "timeout \(Int(deadline.remaining.rounded(.up))) bash -c \(shellQuote("set -euo pipefail; " + command)) | (base64 -w 0; echo)\n"
        try await send(Array(script.utf8), until: deadline)
        let encoded = try await readLine(until: deadline)
        try await send(Array("echo ${PIPESTATUS[0]}\n".utf8), until: deadline)
        let status = try await readLine(until: deadline)
        let output = Data(base64Encoded: String(decoding: encoded, as: UTF8.self)).map { Array($0) } ?? []
        return CommandResult(status: Int32(String(decoding: status, as: UTF8.self)) ?? -1, output: output)
    }

    private func readLine(until deadline: Deadline) async throws(VouchError) -> [UInt8] {
        while true {
            if let newline = buffer.bytes.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer.copy(buffer.startIndex..<newline)
                buffer.consume(upTo: newline + 1)
                return line
            }
            guard try await receive(until: deadline) else {
                throw VouchError(.timeout, "no answer within the deadline", machine: machine)
            }
        }
    }

    /// Sends a line the shell runs without framing (e.g. `poweroff`), for
    /// commands after which no answer can come.
    package func sendUnframed(_ line: String, until deadline: Deadline) async throws(VouchError) {
        try await hold(until: deadline, for: "to send `\(line)`", command: line)
        defer { lock.release() }
        try await send(Array((line + "\n").utf8), until: deadline)
    }

    /// Runs an interactive `bash -i` on the guest's console and relays bytes
    /// between it and a user until it exits; the framing is then set up again.
    /// The guest console is a tty in cooked mode meanwhile, so a ^C the user
    /// types interrupts the guest command, not the session.
    /// - Throws: `.machineDown` if the guest goes away, `.protocolError` if
    ///   the framing cannot be restored after the user left.
    package func interact(input: ByteQueue, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(VouchError) {
        try await hold(until: nil, for: "for an interactive shell")
        defer { lock.release() }
        if let lost { throw VouchError(.protocolError, "the guest shell is unusable: \(lost)", machine: machine) }
        let nonce = nextNonce()
        try await send(ShellFraming.interactiveLine(nonce: nonce), until: Deadline(seconds: 10))
        let channel = self.channel
        let relay = Task {
            while let bytes = try? await input.next() { try? await channel.send(bytes, Deadline(seconds: 10)) }
            guard !Task.isCancelled else { return }
            // The user went away: end the guest shell so the framing comes back.
            try? await channel.send(ShellFraming.interrupt + Array("\nexit\n".utf8), Deadline(seconds: 10))
        }
        defer { relay.cancel() }
        var scan = buffer.startIndex
        while true {
            let (match, next) = ShellFraming.findMarker(nonce: nonce, in: buffer.bytes, from: scan)
            let safe = match?.outputEnd ?? next
            if safe > buffer.startIndex { await output(buffer.copy(buffer.startIndex..<safe)) }
            if let match {
                buffer.consume(upTo: match.end)
                return
            }
            buffer.consume(upTo: safe)
            scan = buffer.startIndex
            _ = try await receive(until: nil)
        }
    }

    /// Forgets the current session and waits for a new banner (after a reboot).
    package func reconnect(until deadline: Deadline) async throws(VouchError) {
        buffer.removeAll()
        lost = nil
        try await connect(until: deadline)
    }

    /// Takes over a shell that is already running, framing installed (a
    /// restored snapshot): no banner comes, so a marker-only line proves the
    /// channel works. It is a shell builtin: nothing is spawned in the guest.
    /// - Throws: as `connect`.
    package func resume(until deadline: Deadline) async throws(VouchError) {
        try await hold(until: deadline, for: "to resume")
        defer { lock.release() }
        let nonce = nextNonce()
        try await send(ShellFraming.pingLine(nonce: nonce), until: deadline)
        guard try await readAnswer(nonce: nonce, until: deadline) != nil else {
            throw VouchError(.timeout, "the restored guest shell did not answer", machine: machine,
                             outputTail: tail(buffer.suffixText(2000)))
        }
        lost = nil
    }

    /// Holds the shell between commands, e.g. while the guest is snapshotted:
    /// no command is half-sent or half-answered until `release()`.
    /// - Throws: `.timeout` if a command still runs at the deadline; `.cancelled`.
    package func acquire(until deadline: Deadline) async throws(VouchError) {
        try await hold(until: deadline, for: "to pause the guest")
    }

    /// Ends `acquire()`.
    package func release() { lock.release() }

    /// Marks the shell unusable with `reason`.
    package func markLost(_ reason: String) {
        lost = reason
    }

    // MARK: - Internals

    private func nextNonce() -> String {
        counter += 1
        return "\(session)-\(counter)"
    }

    private func hold(until deadline: Deadline?, for purpose: String, command: String? = nil) async throws(VouchError) {
        guard try await lock.acquire(until: deadline) else {
            throw VouchError(.timeout, "waited until the deadline for the guest shell \(purpose): an earlier command still runs",
                             machine: machine, command: command)
        }
    }

    private func send(_ bytes: [UInt8], until deadline: Deadline?) async throws(VouchError) {
        do throws(VouchError) {
            try await channel.send(bytes, deadline)
        } catch where error.kind == .timeout || error.kind == .cancelled {
            throw error.on(machine)
        } catch {
            throw VouchError(.machineDown, "cannot write to the guest shell", machine: machine, cause: error)
        }
    }

    /// Appends the next chunk from the guest to `buffer`; false at the deadline.
    private func receive(until deadline: Deadline?) async throws(VouchError) -> Bool {
        do throws(VouchError) {
            switch try await channel.input.next(until: deadline) {
            case .bytes(let chunk):
                buffer.append(chunk)
                return true
            case .timedOut:
                return false
            case .end:
                throw VouchError(.machineDown, "the guest shell connection closed", machine: machine,
                                 outputTail: tail(buffer.suffixText(4000)))
            }
        } catch where error.kind == .cancelled || error.kind == .machineDown {
            throw error.on(machine)
        } catch {
            throw VouchError(.machineDown, "reading the guest shell failed", machine: machine,
                             outputTail: tail(buffer.suffixText(4000)), cause: error)
        }
    }

    private struct Answer {
        let status: Int32
        let output: [UInt8]
        let flag: ShellFraming.Flag?
    }

    /// Reads up to `nonce`'s marker; nil at the deadline (nothing consumed then).
    private func readAnswer(nonce: String, until deadline: Deadline) async throws(VouchError) -> Answer? {
        var scan = buffer.startIndex
        while true {
            let (match, next) = ShellFraming.findMarker(nonce: nonce, in: buffer.bytes, from: scan)
            if let match {
                let answer = Answer(status: match.status, output: buffer.copy(buffer.startIndex..<match.outputEnd), flag: match.flag)
                buffer.consume(upTo: match.end)
                return answer
            }
            scan = next
            guard try await receive(until: deadline) else { return nil }
        }
    }

    private func readUntilBanner(until deadline: Deadline) async throws(VouchError) {
        let banner = ShellFraming.banner
        while true {
            if let range = firstRange(of: banner, in: buffer.bytes) {
                var end = buffer.startIndex + range.upperBound
                let bytes = buffer.bytes
                while end < bytes.endIndex, bytes[end] == UInt8(ascii: "\r") || bytes[end] == UInt8(ascii: "\n") { end += 1 }
                buffer.consume(upTo: end)
                return
            }
            // Keep only what could be the start of a banner split across reads.
            buffer.keepLast(banner.count)
            guard try await receive(until: deadline) else {
                throw VouchError(.timeout, "no backdoor banner before the deadline", machine: machine)
            }
        }
    }

    /// Interrupts the running command and reads up to its marker, waiting
    /// `patience` seconds after each of ^C, ^C and ^\\, within the recovery budget.
    private func recover(nonce: String, patience: Double = 2) async -> Bool {
        let budget = Deadline(seconds: Self.recoveryBudget)
        for (i, signal) in [ShellFraming.interrupt, ShellFraming.interrupt, ShellFraming.quit].enumerated() {
            guard !budget.hasPassed, (try? await send(signal, until: budget)) != nil else { break }
            let wait = budget.capped(at: i == 0 ? patience : min(patience, 1))
            let answer = try? await readAnswer(nonce: nonce, until: wait)
            if answer != nil { return true }
        }
        lost = "a command timed out and could not be interrupted"
        return false
    }
}
