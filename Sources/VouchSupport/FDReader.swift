import Foundation
import Glibc
import Synchronization

/// Reads a file descriptor on its own thread until end of file and feeds a `ByteQueue`.
///
/// Blocking reads on a dedicated thread work the same for pipes, sockets and
/// ttys, which is every kind of guest stream Vouch has. The reader owns the
/// descriptor and closes it when the stream ends. A pty master reports the
/// end of its session as EIO: that is an end of stream too.
package final class FDReader: Sendable {
    package let queue = ByteQueue()
    private let fd: Int32
    /// Set once the thread has closed `fd`: its number may then belong to
    /// another descriptor, which a late `shutdownSocket` must not touch.
    private let closed = Mutex(false)

    /// Starts reading `fd`. With `gathering` (seconds), the thread pauses
    /// that long after a read that did not fill its buffer, so that a writer
    /// writing a byte at a time (QEMU's emulated UART) is read in chunks, not
    /// one wake-up per byte; data then arrives up to that much later.
    package init(fd: Int32, name: String, gathering: Double = 0) {
        self.fd = fd
        let queue = self.queue
        let pause = useconds_t(max(0, gathering) * 1_000_000)
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    queue.append(Array(buffer[0..<n]))
                    if pause > 0, n < buffer.count { usleep(pause) }
                } else if n == 0 {
                    queue.finish()
                    break
                } else if errno == EAGAIN {
                    var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    _ = poll(&poller, 1, 1000)
                } else if errno != EINTR {
                    let e = errno
                    // EBADF/EINVAL after shutdown means we were asked to stop; EIO is a pty's hang-up.
                    let clean = [EBADF, EINVAL, ECONNRESET, EIO].contains(e)
                    queue.finish(clean ? nil : VouchError(.other, "reading \(name) failed", cause: SystemCallError("read \(name)", errno: e)))
                    break
                }
            }
            self.closed.withLock { done in
                close(fd)
                done = true
            }
        }
        thread.name = "vouch-read-\(name)"
        thread.start()
    }

    /// Stops the reader: it sees end of file and closes the descriptor.
    /// Works for sockets; for pipes the writer's exit does the same.
    package func shutdownSocket() {
        closed.withLock { done in
            if !done { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }
}

/// Writes all of `bytes` to `fd` without ever blocking the calling thread:
/// when the peer does not read (a frozen VMM), it waits asynchronously,
/// until `deadline` if given.
/// - Throws: `.timeout` when the deadline passes, `.other` carrying the
///   `SystemCallError` when the write fails (e.g. the peer is gone),
///   `.cancelled`.
package func writeAll(fd: Int32, _ bytes: [UInt8], what: String = "write", until deadline: Deadline? = nil) async throws(VouchError) {
    var offset = 0
    var stalledSince: ContinuousClock.Instant?
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { raw -> Int in
            let pointer = raw.baseAddress! + offset
            let count = raw.count - offset
            let sent = send(fd, pointer, count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
            guard sent < 0, errno == ENOTSOCK else { return sent }
            // A pipe or tty: write only what poll says fits, so write() cannot block.
            var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard poll(&poller, 1, 0) > 0 else { errno = EAGAIN; return -1 }
            if poller.revents & Int16(POLLERR | POLLHUP) != 0 { errno = EPIPE; return -1 }
            return write(fd, pointer, min(count, Int(PIPE_BUF)))
        }
        if n > 0 {
            offset += n
            stalledSince = nil
            continue
        }
        let e = errno
        if n < 0, e == EINTR { continue }
        guard n < 0, e == EAGAIN || e == EWOULDBLOCK else {
            throw VouchError(.other, "\(what) failed", cause: SystemCallError(what, errno: n == 0 ? EPIPE : e))
        }
        if let deadline, deadline.hasPassed {
            throw VouchError(.timeout, "\(what): the other end has not read anything for \(formatSeconds((ContinuousClock.now - (stalledSince ?? .now)).seconds))")
        }
        if stalledSince == nil { stalledSince = .now }
        try await delay(0.002)
    }
}

/// Writes all of `bytes` to `fd`, blocking; for files and for threads that
/// own their descriptor (port relays).
/// - Throws: `SystemCallError` if the write fails (e.g. the peer is gone).
package func writeAllBlocking(fd: Int32, _ bytes: [UInt8]) throws(SystemCallError) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 {
            if errno == EINTR { continue }
            throw SystemCallError("write")
        }
        offset += n
    }
}
