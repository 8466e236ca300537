import Glibc
import Synchronization

/// A `GuestChannel` that outlives the processes carrying it.
///
/// Containers and SSH hosts have no virtconsole that survives a reboot: each
/// boot needs a new `nsenter` or `ssh` session. The relay keeps one input
/// queue for the machine's lifetime and copies each session's output into
/// it, so `GuestShell.reconnect()` simply waits for the next session's
/// banner, as it does on a VM's console.
final class SessionRelay: Sendable {
    /// Bytes from whichever session is current.
    let input = ByteQueue()
    private let writeFD = Mutex<Int32>(-1)

    /// The channel handed to `GuestShell`. Sending between sessions fails
    /// as a write to a closed console would.
    var channel: GuestChannel {
        GuestChannel(
            input: input,
            send: { [self] bytes in
                let fd = writeFD.withLock { $0 }
                guard fd >= 0 else { throw SystemError("write to the guest shell (no session)", errno: EPIPE) }
                try writeAll(fd: fd, bytes)
            },
            close: { [self] in finish() })
    }

    /// Copies `output` into the relay until it ends; writes go to `fd` meanwhile.
    /// A pty master reports the end of its session as EIO, not as EOF.
    func carry(_ output: ByteQueue, writingTo fd: Int32) async {
        writeFD.withLock { $0 = fd }
        while let chunk = try? await output.next() { input.append(chunk) }
        writeFD.withLock { if $0 == fd { $0 = -1 } }
    }

    /// Ends the input for good: the machine is gone.
    func finish() {
        writeFD.withLock { $0 = -1 }
        input.finish()
    }
}
