import Foundation
import Glibc
import Synchronization
import VouchSupport

/// A unix socket server that answers each connection as a test says: with
/// bytes, by closing early, or not at all. For testing API clients against
/// the ways a VMM can misbehave.
package final class ScriptedUnixServer: @unchecked Sendable {
    /// What to do with one connection, given the request bytes read so far.
    package enum Reply: Sendable {
        /// Not enough of the request yet: read more.
        case readMore
        /// Write these bytes, then close.
        case respond([UInt8])
        /// Close without answering.
        case close
        /// Keep the connection open and never answer.
        case hang
    }

    package let path: String
    private let listener: Int32
    private let thread: Thread
    private final class Requests: Sendable {
        let list = Mutex<[String]>([])
        func add(_ bytes: [UInt8]) { list.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
    }
    private let requests = Requests()

    /// The requests received, as text, in order.
    package var received: [String] { requests.list.withLock { $0 } }

    /// Listens on `path`; `reply` decides per connection.
    package init(path: String, reply: @escaping @Sendable ([UInt8]) -> Reply) throws {
        self.path = path
        unlink(path)
        listener = try UnixSocket.listen(path: path)
        let listener = self.listener, requests = self.requests
        thread = Thread {
            var held: [Int32] = []
            while true {
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else { break }
                var request: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65536)
                serve: while true {
                    switch reply(request) {
                    case .readMore:
                        let n = read(fd, &buffer, buffer.count)
                        if n <= 0 { close(fd); break serve }
                        request += buffer[0..<n]
                    case .respond(let bytes):
                        requests.add(request)
                        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                        close(fd)
                        break serve
                    case .close:
                        requests.add(request)
                        close(fd)
                        break serve
                    case .hang:
                        requests.add(request)
                        held.append(fd)
                        break serve
                    }
                }
            }
            held.forEach { close($0) }
        }
        thread.start()
    }

    /// Whether `request` holds a whole HTTP request (head and Content-Length body).
    package static func isComplete(_ request: [UInt8]) -> Bool {
        guard let end = request.firstRange(of: Array("\r\n\r\n".utf8)) else { return false }
        let head = String(decoding: request[..<end.lowerBound], as: UTF8.self).lowercased()
        let length = head.components(separatedBy: "\r\n").first { $0.hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
        return request.count - end.upperBound >= length
    }

    /// Stops listening and removes the socket.
    package func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        unlink(path)
    }
}
