import Foundation
import Glibc

/// Minimal unix-domain stream sockets: the transport of QMP, the guest
/// shell's virtconsole and the VDE/HTTP control sockets.
package enum UnixSocket {
    /// The longest path a unix socket address can hold (`sun_path` minus its NUL).
    package static let maxPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Creates a listening socket at `path` (mode 0600).
    /// - Throws: `SystemCallError` if the path is too long or bind/listen fail.
    package static func listen(path: String) throws(SystemCallError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket") }
        do throws(SystemCallError) {
            unlink(path)
            try withAddress(path) { (addr, len) throws(SystemCallError) in
                guard bind(fd, addr, len) == 0 else { throw SystemCallError("bind \(path)") }
            }
            chmod(path, 0o600)
            guard Glibc.listen(fd, 4) == 0 else { throw SystemCallError("listen \(path)") }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// Connects to the socket at `path`.
    /// - Throws: `SystemCallError` (e.g. ENOENT or ECONNREFUSED while the server is not up yet).
    package static func connect(path: String) throws(SystemCallError) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket") }
        do throws(SystemCallError) {
            try withAddress(path) { (addr, len) throws(SystemCallError) in
                guard Glibc.connect(fd, addr, len) == 0 else { throw SystemCallError("connect \(path)") }
            }
            return fd
        } catch {
            close(fd)
            throw error
        }
    }

    /// Connects, retrying until the server appears, `seconds` pass or `gaveUp` says so.
    /// - Throws: `.other` carrying the last connect error when the deadline
    ///   passes or `gaveUp` is true; `.cancelled`.
    package static func connect(path: String, retryingFor seconds: Double, unless gaveUp: () -> Bool = { false }) async throws(VouchError) -> Int32 {
        let deadline = Deadline(seconds: seconds)
        while true {
            do {
                return try connect(path: path)
            } catch {
                if deadline.hasPassed || gaveUp() {
                    throw VouchError(.other, "cannot connect to \(path)", cause: error)
                }
            }
            try await delay(0.01)
        }
    }

    /// A connected pair of stream sockets (both close-on-exec).
    /// - Throws: `SystemCallError`.
    package static func pair() throws(SystemCallError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemCallError("socketpair")
        }
        return (fds[0], fds[1])
    }

    /// Raises the send buffer of `fd` to `bytes`, past the system limit when
    /// allowed (root); returns the size the kernel granted.
    @discardableResult
    package static func growSendBuffer(_ fd: Int32, to bytes: Int32) -> Int32 {
        var size = bytes
        let len = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, len) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, len)
        }
        var granted: Int32 = 0
        var grantedLen = len
        _ = getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &granted, &grantedLen)
        return granted
    }

    private static func withAddress<R>(
        _ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> R
    ) throws(SystemCallError) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else {
            throw SystemCallError("socket path longer than \(capacity - 1) bytes: \(path)", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let size = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result: Result<R, SystemCallError> = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                do throws(SystemCallError) { return .success(try body(pointer, size)) } catch { return .failure(error) }
            }
        }
        return try result.get()
    }
}

/// TCP sockets on the host's loopback: forwarded ports and free-port probes.
package enum LoopbackTCP {
    /// Binds a socket to 127.0.0.1:`port` (0: the kernel picks a free one)
    /// and, with a `backlog`, listens. Returns the descriptor and the port.
    /// - Throws: `SystemCallError` naming the address (e.g. the port is taken).
    package static func bind(port: Int = 0, backlog: Int32? = nil) throws(SystemCallError) -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCallError("socket") }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, len) == 0 && (backlog.map { listen(fd, $0) == 0 } ?? true) && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else {
            let error = SystemCallError("bind 127.0.0.1:\(port)")
            close(fd)
            throw error
        }
        return (fd, Int(UInt16(bigEndian: addr.sin_port)))
    }

    /// A TCP port on 127.0.0.1 that is free right now (the kernel picks it).
    /// - Throws: `SystemCallError`.
    package static func freePort() throws(SystemCallError) -> Int {
        let (fd, port) = try bind()
        close(fd)
        return port
    }
}
