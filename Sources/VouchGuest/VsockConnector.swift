import Glibc
import VouchSupport

/// Opens a guest channel over a VMM's vsock: firecracker and
/// cloud-hypervisor expose the guest's vsock as a unix socket on the host,
/// where `CONNECT <port>\n` asks for the guest's listener on that port and
/// `OK <host port>\n` says it accepted. After that line the stream is the
/// guest service (the backdoor), spoken to like any other channel.
package enum VsockConnector {
    /// The outcome of one handshake.
    enum Handshake: Equatable {
        case accepted
        /// The VMM closed the connection: nothing listens on the port (yet).
        case refused
        /// Something other than `OK …` came back.
        case garbled(String)
    }

    /// Connects to `port` through the vsock socket `path`, retrying while
    /// the guest's listener is not up, until `deadline` (or `gaveUp`, e.g.
    /// the VMM exited). Each attempt's handshake must finish within
    /// `handshakeTimeout` seconds.
    /// - Throws: `.bootFailed` saying whether the socket never appeared,
    ///   the guest never listened, or the handshake was garbled or silent;
    ///   `.cancelled`.
    package static func connect(
        path: String, port: UInt32, machine: String, until deadline: Deadline,
        handshakeTimeout: Double = 5, unless gaveUp: @Sendable () -> Bool = { false }
    ) async throws(VouchError) -> GuestChannel {
        var last = "the vsock socket \(path) never accepted a connection"
        while !deadline.hasPassed, !gaveUp() {
            if Task.isCancelled { throw VouchError.cancelled() }
            if let fd = try? UnixSocket.connect(path: path) {
                switch try await handshake(fd, port: port, until: Deadline(seconds: min(handshakeTimeout, max(0.1, deadline.remaining)))) {
                case .accepted?:
                    return GuestChannel(reader: FDReader(fd: fd, name: "vsock-\(machine)"), writeFD: dup(fd), name: machine)
                case .refused?:
                    last = "nothing in the guest accepted vsock port \(port) (the VMM closed each CONNECT)"
                case .garbled(let line)?:
                    close(fd)
                    throw VouchError(.bootFailed, "the VMM answered CONNECT \(port) on \(path) with \(String(reflecting: line)), not OK <port>",
                                     machine: machine)
                case nil:
                    last = "CONNECT \(port) on \(path) got no answer within \(formatSeconds(handshakeTimeout))"
                }
                close(fd)
            }
            try await delay(0.1)
        }
        throw VouchError(.bootFailed, "no guest shell on vsock port \(port): \(last)", machine: machine)
    }

    /// Sends `CONNECT port` and reads the answer line byte by byte, so that
    /// nothing the guest sends after it is taken from the channel. Nil when
    /// no full line came before `deadline`.
    static func handshake(_ fd: Int32, port: UInt32, until deadline: Deadline) async throws(VouchError) -> Handshake? {
        do {
            try await writeAll(fd: fd, Array("CONNECT \(port)\n".utf8), what: "vsock CONNECT", until: deadline)
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            return .refused
        }
        var line: [UInt8] = []
        while line.count < 128 {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, 0)
            if ready > 0 {
                var byte: UInt8 = 0
                let n = read(fd, &byte, 1)
                if n <= 0 { return .refused }
                if byte == UInt8(ascii: "\n") {
                    let text = String(decoding: line, as: UTF8.self)
                    let words = text.split(separator: " ")
                    return words.count == 2 && words[0] == "OK" && UInt32(words[1]) != nil ? .accepted : .garbled(text)
                }
                line.append(byte)
                continue
            }
            if deadline.hasPassed { return nil }
            try await delay(0.005)
        }
        return .garbled(String(decoding: line, as: UTF8.self) + "…")
    }
}
