/// The one error type of Vouch.
///
/// Every failure says what failed (`kind`), on which machine, for which
/// command, with which exit status and the tail of the output, so that a
/// test log alone is enough to see why a test failed.
public struct VouchError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public enum Kind: String, Sendable {
        /// A command exited non-zero where success was required.
        case commandFailed
        /// A command exited zero where failure was required (`fail`).
        case commandSucceeded
        /// A deadline passed.
        case timeout
        /// The machine stopped (QEMU exited, guest crashed) while in use.
        case machineDown
        /// The machine could not boot.
        case bootFailed
        /// A program could not be started.
        case spawnFailed
        /// The test spec or configuration is invalid.
        case invalidSpec
        /// A guest image, kernel or disk is missing.
        case missingImage
        /// The operation does not exist for this backend or in Vouch yet.
        case unsupported
        /// The guest sent something the protocol does not allow.
        case protocolError
        /// A systemd unit reached a state it cannot leave on its own.
        case unitFailed
        /// An assertion in the test script failed.
        case assertionFailed
        /// A QMP command returned an error.
        case qmpError
        /// Anything else, with the message saying what.
        case other
    }

    /// What kind of failure this is.
    public var kind: Kind
    /// The message, one line, without the context below.
    public var message: String
    /// The machine it happened on, if any.
    public var machine: String?
    /// The guest command that failed, if any.
    public var command: String?
    /// The command's exit status, if it ran to the end.
    public var status: Int32?
    /// The last lines of the command's output or the console.
    public var outputTail: String?
    /// Where in the test script the failing call was made.
    public var location: SourceLocation?

    /// Creates an error; everything but `kind` and `message` is optional context.
    public init(
        _ kind: Kind, _ message: String, machine: String? = nil, command: String? = nil,
        status: Int32? = nil, outputTail: String? = nil, location: SourceLocation? = nil
    ) {
        self.kind = kind
        self.message = message
        self.machine = machine
        self.command = command
        self.status = status
        self.outputTail = outputTail
        self.location = location
    }

    /// The message with its location, machine, command, status and output tail, one per line.
    public var description: String {
        var text = ""
        if let location { text += "\(location): " }
        if let machine { text += "\(machine): " }
        text += message
        if let command, !message.contains(command) { text += "\n  command: \(command)" }
        if let status { text += "\n  exit status: \(status)" }
        if let tail = outputTail, !tail.isEmpty {
            text += "\n  output tail:\n" + tail.split(separator: "\n", omittingEmptySubsequences: false)
                .map { "    | \($0)" }.joined(separator: "\n")
        }
        return text
    }

    /// Returns a copy with the script location filled in if it was empty.
    func at(_ location: SourceLocation) -> VouchError {
        var copy = self
        if copy.location == nil { copy.location = location }
        return copy
    }

    static func spawnFailed(program: String, reason: String) -> VouchError {
        VouchError(.spawnFailed, "cannot start \(program): \(reason)")
    }
}

/// A file and line in a test script.
public struct SourceLocation: Sendable, CustomStringConvertible {
    /// The script file (or Swift source file) of the call.
    public var file: String
    /// The line of the call in `file`.
    public var line: Int

    /// A location in a test script.
    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    /// `file:line`, as compilers print it.
    public var description: String { "\(file):\(line)" }
}

/// The last `lines` lines of `text`, at most `maxBytes` bytes, for error messages.
func tail(_ text: String, lines: Int = 20, maxBytes: Int = 4000) -> String {
    var trimmed = text
    if trimmed.utf8.count > maxBytes {
        trimmed = "…" + String(decoding: trimmed.utf8.suffix(maxBytes), as: UTF8.self)
    }
    let all = trimmed.split(separator: "\n", omittingEmptySubsequences: false)
    let kept = all.suffix(lines + (all.last == "" ? 1 : 0))
    // One very long line (e.g. binary output) must not bury the message.
    let shortened = kept.map { $0.count > 300 ? $0.prefix(150) + " … " + $0.suffix(100) : $0 }
    return shortened.joined(separator: "\n").trimmingTrailingNewlines()
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var s = Substring(self)
        // "\r\n" is one Character, equal to neither "\n" nor "\r".
        while s.last == "\n" || s.last == "\r" || s.last == "\r\n" { s = s.dropLast() }
        return String(s)
    }
}
