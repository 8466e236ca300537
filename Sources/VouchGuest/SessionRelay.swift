import Glibc
import Synchronization
import VouchSupport

/// A `GuestChannel` that outlives the processes carrying it.
///
/// Containers and SSH hosts have no virtconsole that survives a reboot: each
/// boot needs a new `nsenter` or `ssh` session. The relay keeps one input
/// queue for the machine's lifetime and copies each session's output into
/// it, so `GuestShell.reconnect()` simply waits for the next session's
/// banner, as it does on a VM's console.
package final class SessionRelay: Sendable {
    /// Bytes from whichever session is current.
    package let input = ByteQueue()
    private let writer = Mutex<WriteDescriptor?>(nil)

    package init() {}

    /// The channel handed to `GuestShell`. Sending between sessions fails
    /// as a write to a closed console would.
    package var channel: GuestChannel {
        GuestChannel(
            input: input,
            send: { [self] bytes, deadline throws(VouchError) in
                guard let writer = writer.withLock({ $0 }) else {
                    throw VouchError(.other, "write to the guest shell: no session", cause: SystemCallError("write", errno: EPIPE))
                }
                try await writer.write(bytes, what: "write to the guest shell", until: deadline)
            },
            close: { [self] in finish() })
    }

    /// Copies `output` into the relay until it ends; writes go to `fd`
    /// meanwhile (the caller keeps owning `fd`).
    package func carry(_ output: ByteQueue, writingTo fd: Int32) async {
        let descriptor = WriteDescriptor(dup(fd))
        writer.withLock { $0 = descriptor }
        while let chunk = try? await output.next() { input.append(chunk) }
        writer.withLock { if $0 === descriptor { $0 = nil } }
        descriptor.close()
    }

    /// Ends the input for good: the machine is gone.
    package func finish() {
        writer.withLock { $0 = nil }
        input.finish()
    }
}
