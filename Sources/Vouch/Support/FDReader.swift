import Foundation
import Glibc
import Synchronization

/// Reads a file descriptor on its own thread until end of file and feeds a `ByteQueue`.
///
/// Blocking reads on a dedicated thread work the same for pipes, sockets and
/// ttys, which is every kind of guest stream Vouch has. The reader owns the
/// descriptor and closes it when the stream ends.
final class FDReader: Sendable {
    let queue = ByteQueue()
    private let fd: Int32
    /// Set once the thread has closed `fd`: its number may then belong to
    /// another descriptor, which a late `shutdownSocket` must not touch.
    private let closed = Mutex(false)

    init(fd: Int32, name: String) {
        self.fd = fd
        let queue = self.queue
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 256 * 1024)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    queue.append(Array(buffer[0..<n]))
                } else if n == 0 {
                    queue.finish()
                    break
                } else if errno != EINTR {
                    let e = errno
                    // EBADF/EINVAL after shutdown means we were asked to stop.
                    queue.finish(e == EBADF || e == EINVAL || e == ECONNRESET ? nil : SystemError("read", errno: e))
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
    func shutdownSocket() {
        closed.withLock { done in
            if !done { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }
}

/// Writes all of `bytes` to `fd`, retrying short writes.
/// - Throws: `SystemError` if the write fails (e.g. the peer is gone).
func writeAll(fd: Int32, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 {
            if errno == EINTR { continue }
            throw SystemError("write")
        }
        offset += n
    }
}
