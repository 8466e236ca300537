import Glibc
import Synchronization
import VouchSupport

/// A byte stream to a guest's backdoor shell: bytes in, a way to send bytes out.
///
/// Backends build one from whatever carries the shell (the virtconsole socket,
/// a vsock CONNECT stream, an nsenter pty, an ssh session); `GuestShell`
/// speaks the protocol on top and never knows which.
package struct GuestChannel: Sendable {
    /// Bytes from the guest.
    package let input: ByteQueue
    /// Sends bytes to the guest, waiting at most until the deadline when the
    /// other side does not read.
    package let send: @Sendable ([UInt8], Deadline?) async throws(VouchError) -> Void
    /// Closes the stream; `input` ends.
    package let close: @Sendable () -> Void

    package init(
        input: ByteQueue, send: @escaping @Sendable ([UInt8], Deadline?) async throws(VouchError) -> Void,
        close: @escaping @Sendable () -> Void
    ) {
        self.input = input
        self.send = send
        self.close = close
    }

    /// A channel over a socket (or pty) read by `reader` and written through
    /// `writeFD`, which the channel owns and closes with the stream.
    package init(reader: FDReader, writeFD: Int32, name: String) {
        let closed = WriteDescriptor(writeFD)
        self.input = reader.queue
        self.send = { bytes, deadline throws(VouchError) in
            try await closed.write(bytes, what: "write to the guest shell of \(name)", until: deadline)
        }
        self.close = {
            reader.shutdownSocket()
            closed.close()
        }
    }
}

/// A descriptor written from many tasks and closed once.
package final class WriteDescriptor: Sendable {
    private let fd: Mutex<Int32>

    package init(_ fd: Int32) { self.fd = Mutex(fd) }

    /// Writes all of `bytes` (see `writeAll`).
    /// - Throws: `.other` if the descriptor was closed or the write fails; `.timeout`; `.cancelled`.
    package func write(_ bytes: [UInt8], what: String, until deadline: Deadline?) async throws(VouchError) {
        let current = fd.withLock { $0 }
        guard current >= 0 else {
            throw VouchError(.other, "\(what): the stream is closed", cause: SystemCallError(what, errno: EPIPE))
        }
        try await writeAll(fd: current, bytes, what: what, until: deadline)
    }

    /// Closes the descriptor (once).
    package func close() {
        fd.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    deinit { close() }
}
