import Foundation

/// The one error type of Vouch.
///
/// Every failure says what failed (`kind`), on which machine, for which
/// command, with which exit status and the tail of the output, so that a
/// test log alone is enough to see why a test failed. What caused it below
/// Vouch (a system call's errno, a QMP error class, an HTTP status) is kept
/// in `cause` as a value, not pasted into the message.
public struct VouchError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    public enum Kind: String, Sendable, CaseIterable {
        /// A command exited non-zero where success was required.
        case commandFailed
        /// A command exited zero where failure was required (`fail`).
        case commandSucceeded
        /// A deadline passed.
        case timeout
        /// The machine stopped (its VMM exited or paused the guest, the guest
        /// crashed) while in use.
        case machineDown
        /// The machine could not boot.
        case bootFailed
        /// A program could not be started.
        case spawnFailed
        /// The test spec, configuration or an argument is invalid.
        case invalidSpec
        /// A guest image, kernel or disk is missing.
        case missingImage
        /// The operation does not exist for this backend or in Vouch yet.
        case unsupported
        /// The guest or a peer sent something the protocol does not allow.
        case protocolError
        /// A systemd unit reached a state it cannot leave on its own, or does not exist.
        case unitFailed
        /// An assertion in the test script failed.
        case assertionFailed
        /// A QMP command returned an error.
        case qmpError
        /// A VMM's REST API (firecracker, cloud-hypervisor) refused a request
        /// or answered outside its protocol.
        case apiError
        /// The call was cancelled (Ctrl-C, a failed sibling, the global timeout).
        case cancelled
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
    /// The error underneath, if any: a `SystemCallError` (errno), a
    /// `QMPErrorReply` (QEMU's error class), another `VouchError`, or
    /// whatever a lower library threw.
    public var cause: (any Error & Sendable)?

    /// Creates an error; everything but `kind` and `message` is optional context.
    public init(
        _ kind: Kind, _ message: String, machine: String? = nil, command: String? = nil,
        status: Int32? = nil, outputTail: String? = nil, location: SourceLocation? = nil,
        cause: (any Error & Sendable)? = nil
    ) {
        self.kind = kind
        self.message = message
        self.machine = machine
        self.command = command
        self.status = status
        self.outputTail = outputTail
        self.location = location
        self.cause = cause
    }

    /// The message with its location, machine, command, status, output tail
    /// and cause, one per line.
    public var description: String {
        var text = ""
        if let location { text += "\(location): " }
        if let machine { text += "\(machine): " }
        text += message
        if let command, !message.contains(command) { text += "\n  command: \(command)" }
        if let status { text += "\n  exit status: \(status)" }
        if let cause {
            let said = "\(cause)"
            if !message.contains(said) { text += "\n  cause: " + said.replacingOccurrences(of: "\n", with: "\n  ") }
        }
        if let tail = outputTail, !tail.isEmpty {
            text += "\n  output tail:\n" + tail.split(separator: "\n", omittingEmptySubsequences: false)
                .map { "    | \($0)" }.joined(separator: "\n")
        }
        return text
    }

    /// The first error of `kind` in this error's chain of causes (itself included).
    public func find(_ kind: Kind) -> VouchError? {
        var current: VouchError? = self
        while let error = current {
            if error.kind == kind { return error }
            current = error.cause as? VouchError
        }
        return nil
    }

    /// Returns a copy with the script location filled in if it was empty.
    package func at(_ location: SourceLocation) -> VouchError {
        var copy = self
        if copy.location == nil { copy.location = location }
        return copy
    }

    /// Returns a copy naming `machine` (and `command`) where it named none.
    package func on(_ machine: String?, command: String? = nil) -> VouchError {
        var copy = self
        if copy.machine == nil { copy.machine = machine }
        if copy.command == nil { copy.command = command }
        return copy
    }

    /// `error` as a `VouchError`: itself if it is one, `.cancelled` for a
    /// `CancellationError`, otherwise `.other` saying `what` failed, with
    /// `error` kept as the cause.
    package static func from(_ error: any Error, _ what: String = "internal error", machine: String? = nil) -> VouchError {
        switch error {
        case let error as VouchError: return error.on(machine)
        case is CancellationError: return VouchError(.cancelled, "cancelled", machine: machine, cause: CancellationError())
        case let error as any Error & Sendable: return VouchError(.other, what, machine: machine, cause: error)
        default: return VouchError(.other, what, machine: machine, cause: SendableError(error))
        }
    }

    /// The error a cancelled call throws.
    package static func cancelled(_ what: String = "cancelled", machine: String? = nil) -> VouchError {
        VouchError(.cancelled, what, machine: machine, cause: CancellationError())
    }

    package static func spawnFailed(program: String, reason: String, cause: (any Error & Sendable)? = nil) -> VouchError {
        VouchError(.spawnFailed, "cannot start \(program): \(reason)", cause: cause)
    }

    /// Whether this is a cancellation rather than a failure.
    public var isCancellation: Bool { kind == .cancelled }
}

/// Runs `body`, turning whatever it throws into a `VouchError` (see `VouchError.from`).
package func vouching<T>(_ what: String, machine: String? = nil, _ body: () throws -> T) throws(VouchError) -> T {
    do { return try body() } catch { throw VouchError.from(error, what, machine: machine) }
}

/// Runs `body`, turning whatever it throws into a `VouchError` (see `VouchError.from`).
package func vouching<T>(_ what: String, machine: String? = nil, _ body: () async throws -> T) async throws(VouchError) -> T {
    do { return try await body() } catch { throw VouchError.from(error, what, machine: machine) }
}

/// A non-Sendable error's text and type, kept as a cause.
public struct SendableError: Error, Sendable, CustomStringConvertible {
    /// The original error's type name.
    public let type: String
    /// The original error's description.
    public let description: String

    /// Captures `error`'s type and description.
    public init(_ error: any Error) {
        self.type = String(describing: Swift.type(of: error))
        // Foundation's errors print as "Error Domain=… Code=…"; their localized text says what happened.
        let localized = error.localizedDescription
        self.description = localized.hasPrefix("The operation could not be completed") ? "\(error)" : localized
    }
}

/// A file and line in a test script.
public struct SourceLocation: Sendable, CustomStringConvertible, Equatable {
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
