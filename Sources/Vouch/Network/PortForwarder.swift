import Foundation
import Glibc
import Synchronization

/// Forwards a TCP port on the host's loopback into a test network namespace
/// (TAP networks, where QEMU's own forwarding would listen inside it).
///
/// Vouch listens on 127.0.0.1:`hostPort` itself. Each connection gets a
/// relay process that enters the namespace and connects to the guest:
/// `bash -c 'exec 3<>/dev/tcp/ADDR/PORT; cat <&3 & cat >&3'`. It needs
/// nothing beyond bash and cat, and works for both the root and the
/// user-namespace variants of the network.
final class PortForwarder: Sendable {
    let hostPort: Int
    private let listener: Int32
    private let relays = RelayList()

    /// Listens on 127.0.0.1:`hostPort` and relays to `address`:`port` as
    /// seen from inside the namespace that `enter` (nsenter arguments) joins.
    /// - Throws: `SystemError` if the host port cannot be bound.
    init(hostPort: Int, address: String, port: Int, enter: [String]) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(hostPort).bigEndian)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard bound, listen(fd, 16) == 0 else {
            let error = SystemError("bind 127.0.0.1:\(hostPort)")
            close(fd)
            throw error
        }
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
                if n <= 0 || (try? writeAll(fd: toRelay, Array(buffer[0..<n]))) == nil { break }
            }
            close(client)
            relay.signal(SIGTERM)
        }
        upstream.start()
        Task {
            while let chunk = try? await fromRelay.queue.next() {
                if (try? writeAll(fd: writeFD, chunk)) == nil { break }
            }
            // Wakes the upstream reader too.
            Glibc.shutdown(writeFD, Int32(SHUT_RDWR))
            close(writeFD)
            relay.signal(SIGTERM)
        }
    }

    /// Stops listening and ends every relay. Never throws.
    func stop() async {
        Glibc.shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for relay in relays.list.withLock({ $0 }) { await relay.terminate(grace: 0.5) }
    }
}

/// The relay processes of one forwarder.
final class RelayList: Sendable {
    let list = Mutex<[ChildProcess]>([])
}
