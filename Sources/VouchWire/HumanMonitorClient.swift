import Foundation
import Glibc
import VouchSupport

/// A client of QEMU's human monitor (HMP) on a unix socket, returning what
/// the monitor prints exactly as a client of the socket reads it: QEMU's
/// line editor echoing the command, the output with CR LF line ends, and
/// the next `(qemu) ` prompt. That is what nixpkgs' `send_monitor_command`
/// returns, and what scripts written for it parse. (Vouch's own monitor
/// commands go through QMP's `human-monitor-command`, which returns the
/// output alone.)
///
/// Commands are serialized; each one has a deadline.
package final class HumanMonitorClient: Sendable {
    package let machine: String
    private let fd: Int32
    private let reader: FDReader
    private let lock = AsyncLock()

    /// What the monitor prints when it is ready for a command.
    package static let prompt = Array("(qemu) ".utf8)

    /// Connects to the monitor socket at `path` and reads its banner, up to
    /// the first prompt.
    /// - Throws: `.qmpError` if the socket never answers or sends no prompt
    ///   within `timeout` seconds; `.cancelled`.
    package static func connect(path: String, machine: String, timeout: Double = 10) async throws(VouchError) -> HumanMonitorClient {
        let fd: Int32
        do {
            fd = try await UnixSocket.connect(path: path, retryingFor: timeout)
        } catch where error.kind != .cancelled {
            throw VouchError(.qmpError, "cannot connect to the QEMU monitor at \(path)", machine: machine, cause: error.cause)
        }
        let client = HumanMonitorClient(machine: machine, fd: fd)
        do {
            _ = try await client.readToPrompt(until: Deadline(seconds: timeout), seconds: timeout, what: "the monitor's banner")
        } catch {
            client.close()
            throw error
        }
        return client
    }

    private init(machine: String, fd: Int32) {
        self.machine = machine
        self.fd = fd
        self.reader = FDReader(fd: fd, name: "monitor-\(machine)")
    }

    /// Sends `command` and returns everything the monitor printed up to and
    /// including its next prompt.
    /// - Throws: `.qmpError` when QEMU closes the monitor or does not answer
    ///   within `timeout` seconds; `.cancelled`.
    package func transcript(_ command: String, timeout: Double = 30) async throws(VouchError) -> String {
        let deadline = Deadline(seconds: timeout)
        guard try await lock.acquire(until: deadline) else {
            throw VouchError(.qmpError, "monitor command `\(command)`: the monitor stayed busy for \(formatSeconds(timeout))", machine: machine)
        }
        defer { lock.release() }
        do {
            try await writeAll(fd: fd, Array((command + "\n").utf8), what: "writing to the QEMU monitor", until: deadline)
        } catch where error.kind != .cancelled {
            throw VouchError(.qmpError, "monitor command `\(command)`: cannot send it", machine: machine, cause: error)
        }
        return String(decoding: try await readToPrompt(until: deadline, seconds: timeout, what: "the answer to `\(command)`"), as: UTF8.self)
    }

    /// Closes the connection.
    package func close() { reader.shutdownSocket() }

    /// Reads until what arrived ends with the prompt, as nixpkgs does (a
    /// prompt inside the output does not end it).
    private func readToPrompt(until deadline: Deadline, seconds: Double, what: String) async throws(VouchError) -> [UInt8] {
        var text: [UInt8] = []
        while !text.suffix(Self.prompt.count).elementsEqual(Self.prompt) {
            switch try await reader.queue.next(until: deadline) {
            case .bytes(let chunk): text += chunk
            case .end: return text  // QEMU quit: what it printed is the answer (nixpkgs does the same).
            case .timedOut:
                throw VouchError(.qmpError, "the QEMU monitor sent no prompt within \(formatSeconds(seconds)) while waiting for \(what)",
                                 machine: machine, outputTail: tail(String(decoding: text, as: UTF8.self)))
            }
        }
        return text
    }
}
