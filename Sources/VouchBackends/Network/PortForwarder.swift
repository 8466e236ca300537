import Foundation
import Glibc
import Synchronization
import VouchSupport

/// Forwards a TCP port on the host's loopback into a test network namespace
/// (TAP networks, where QEMU's own forwarding would listen inside it).
///
/// Vouch listens on 127.0.0.1:`hostPort` itself. Each connection gets a
/// relay process that enters the namespace and connects to the guest:
/// `bash -c 'exec 3<>/dev/tcp/ADDR/PORT; cat <&3 & cat >&3'`. It needs
/// nothing beyond bash and cat, and works for both the root and the
/// user-namespace variants of the network.
package final class PortForwarder: Sendable {
    package let hostPort: Int
    private let listener: Int32
    private let relays = RelayList()

    /// Listens on 127.0.0.1:`hostPort` and relays to `address`:`port` as
    /// seen from inside the namespace that `enter` (nsenter arguments) joins.
    /// - Throws: `SystemCallError` if the host port cannot be bound.
    package init(hostPort: Int, address: String, port: Int, enter: [String]) throws(SystemCallError) {
        let (fd, _) = try LoopbackTCP.bind(port: hostPort, backlog: 16)
        self.hostPort = hostPort
        self.listener = fd
        let relays = self.relays
        let script = "exec 3<>/dev/tcp/\(address)/\(port) || exit 1; cat <&3 & exec cat >&3"
        let thread = Thread {
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if errno == EINTR { continue }
                    break  // the listener was shut down
                }
                _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                guard let relay = try? ChildProcess("nsenter", enter + ["bash", "-c", script], pipes: [.stdin, .stdout]) else {
                    close(client)
                    continue
                }
                relays.list.withLock { $0.append(relay) }
                PortForwarder.pump(client: client, relay: relay)
            }
        }
        thread.name = "vouch-forward-\(hostPort)"
        thread.start()
    }

    /// Copies bytes both ways until either side closes. Each direction owns
    /// its own descriptor of the connection and closes it when done.
    private static func pump(client: Int32, relay: ChildProcess) {
        guard let toRelay = relay.stdinFD, let fromRelay = relay.stdout else {
            close(client)
            return
        }
        let writeFD = dup(client)
        let upstream = Thread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(client, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 || (try? writeAllBlocking(fd: toRelay, Array(buffer[0..<n]))) == nil { break }
            }
            close(client)
            relay.signal(SIGTERM)
        }
        upstream.start()
        Task {
            while let chunk = try? await fromRelay.queue.next() {
                if (try? await writeAll(fd: writeFD, chunk, what: "write to a forwarded connection")) == nil { break }
            }
            // Wakes the upstream reader too.
            Glibc.shutdown(writeFD, Int32(SHUT_RDWR))
            close(writeFD)
            relay.signal(SIGTERM)
        }
    }

    /// Stops listening and ends every relay. Never throws.
    package func stop() async {
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for relay in relays.list.withLock({ $0 }) { await relay.terminate(grace: 0.5) }
    }
}

/// The relay processes of one forwarder.
final class RelayList: Sendable {
    let list = Mutex<[ChildProcess]>([])
}
