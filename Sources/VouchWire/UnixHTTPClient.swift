import Foundation
import VouchSupport

/// One HTTP/1.1 response.
package struct HTTPResponse: Sendable, Equatable {
    /// The status code, e.g. 204.
    package let status: Int
    /// The header fields, names lower-cased.
    package let headers: [String: String]
    /// The body, de-chunked.
    package let body: [UInt8]

    /// The body as text (UTF-8, invalid bytes replaced).
    package var text: String { String(decoding: body, as: UTF8.self) }
}

/// HTTP/1.1 to a VMM's REST API on a unix socket (firecracker's
/// `--api-sock`, cloud-hypervisor's `--api-socket`): one connection per
/// request, JSON bodies, every request under a deadline.
///
/// Small on purpose: the two APIs answer with `Content-Length` (or chunks)
/// and never need TLS, redirects, pooling or HTTP/2, and a general client
/// (AsyncHTTPClient over SwiftNIO) would multiply the build CI pays for.
package struct UnixHTTPClient: Sendable {
    /// The API socket.
    package let socketPath: String
    /// The machine, for messages.
    package let machine: String
    /// What the messages call the peer ("firecracker", "cloud-hypervisor").
    package let peer: String

    /// Seconds a request may take unless the caller says otherwise.
    package static let defaultTimeout = 10.0

    package init(socketPath: String, machine: String, peer: String) {
        self.socketPath = socketPath
        self.machine = machine
        self.peer = peer
    }

    /// Sends `method path` with `body` (as JSON, when given) and returns the
    /// response, whatever its status.
    /// - Throws: `.apiError` when the socket cannot be reached or the answer
    ///   is not HTTP, or the peer closes the connection before the response
    ///   is complete; `.timeout` when it is not complete within `timeout`
    ///   seconds; `.cancelled`.
    package func send(_ method: String, _ path: String, body: JSONValue? = nil, timeout: Double = defaultTimeout) async throws(VouchError) -> HTTPResponse {
        let what = "\(method) \(path)"
        let deadline = Deadline(seconds: timeout)
        let fd: Int32
        do { fd = try UnixSocket.connect(path: socketPath) } catch {
            throw VouchError(.apiError, "\(peer): cannot connect to its API socket \(socketPath) for \(what)", machine: machine, cause: error)
        }
        let reader = FDReader(fd: dup(fd), name: "api-\(machine)")
        defer {
            reader.shutdownSocket()
            close(fd)
        }
        let payload = body.map { Array($0.description.utf8) } ?? []
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        if body != nil { head += "Content-Type: application/json\r\n" }
        head += "Content-Length: \(payload.count)\r\n\r\n"
        do {
            try await writeAll(fd: fd, Array(head.utf8) + payload, what: "\(peer) API \(what)", until: deadline)
        } catch where error.kind == .timeout || error.kind == .cancelled {
            throw error.on(machine)
        } catch {
            throw VouchError(.apiError, "\(peer) closed its API socket while \(what) was sent", machine: machine, cause: error)
        }
        var parser = HTTPResponseParser()
        while true {
            if let response = try parser.response(peer: peer, what: what, machine: machine) { return response }
            switch try await reader.queue.next(until: deadline) {
            case .bytes(let bytes):
                parser.append(bytes)
            case .end:
                if let response = try parser.finish(peer: peer, what: what, machine: machine) { return response }
                throw VouchError(.apiError, "\(peer) closed the connection before it answered \(what) completely"
                                 + (parser.received == 0 ? " (no answer at all)" : " (after \(parser.received) bytes)"), machine: machine)
            case .timedOut:
                throw VouchError(.timeout, "\(peer) did not answer \(what) within \(formatSeconds(timeout))"
                                 + (parser.received == 0 ? "" : " (it sent \(parser.received) bytes of a response)"), machine: machine)
            }
        }
    }
}

extension UnixHTTPClient {
    /// Sends the request and requires a 2xx status; returns the JSON body,
    /// or nil when there is none.
    /// - Throws: `.apiError` with the status and the VMM's own words (its
    ///   `fault_message`, an error chain given as an array of strings, or
    ///   the body's text) when it refuses, or when a
    ///   body is not JSON; as `send` otherwise.
    @discardableResult
    package func call(_ method: String, _ path: String, body: JSONValue? = nil, timeout: Double = defaultTimeout) async throws(VouchError) -> JSONValue? {
        let response = try await send(method, path, body: body, timeout: timeout)
        let parsed = response.body.isEmpty ? nil : try? JSONValue.parse(response.body)
        guard (200..<300).contains(response.status) else {
            // firecracker: {"fault_message": "..."}; cloud-hypervisor: the error chain, ["outer", ..., "cause"].
            let chain = parsed?.arrayValue?.compactMap(\.stringValue).joined(separator: ": ")
            let said = parsed?["fault_message"]?.stringValue ?? chain.flatMap { $0.isEmpty ? nil : $0 }
                ?? response.text.trimmingCharacters(in: .whitespacesAndNewlines)
            throw VouchError(.apiError, "\(peer) refused \(method) \(path) (HTTP \(response.status))" + (said.isEmpty ? "" : ": \(said)"),
                             machine: machine)
        }
        if !response.body.isEmpty, parsed == nil {
            throw VouchError(.apiError, "\(peer) answered \(method) \(path) with a body that is not JSON", machine: machine,
                             outputTail: tail(response.text))
        }
        return parsed
    }
}

/// Reads one HTTP/1.1 response from bytes as they come.
struct HTTPResponseParser {
    private var buffer: [UInt8] = []
    private var head: (status: Int, headers: [String: String], bodyStart: Int)?
    /// Bytes received so far.
    var received: Int { buffer.count }

    mutating func append(_ bytes: [UInt8]) { buffer += bytes }

    /// The response, once it is complete; nil while more is needed.
    /// - Throws: `.apiError` when the bytes are not an HTTP/1.x response.
    mutating func response(peer: String, what: String, machine: String) throws(VouchError) -> HTTPResponse? {
        if head == nil {
            guard let end = buffer.firstRange(of: Array("\r\n\r\n".utf8)) else {
                if buffer.count > 64 * 1024 { throw notHTTP(peer, what, machine, "a response head over 64 KiB") }
                return nil
            }
            head = try Self.parseHead(buffer[..<end.lowerBound], peer: peer, what: what, machine: machine)
            head!.bodyStart = end.upperBound
        }
        guard let head else { return nil }
        let body = buffer[head.bodyStart...]
        if head.headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            return try Self.dechunk(Array(body), peer: peer, what: what, machine: machine)
                .map { HTTPResponse(status: head.status, headers: head.headers, body: $0) }
        }
        if let length = head.headers["content-length"] {
            guard let count = Int(length.trimmingCharacters(in: .whitespaces)), count >= 0 else {
                throw notHTTP(peer, what, machine, "a Content-Length of \(length)")
            }
            guard body.count >= count else { return nil }
            return HTTPResponse(status: head.status, headers: head.headers, body: Array(body.prefix(count)))
        }
        // No length: 1xx, 204 and 304 have no body; anything else runs to the close.
        if head.status == 204 || head.status == 304 || head.status < 200 {
            return HTTPResponse(status: head.status, headers: head.headers, body: [])
        }
        return nil
    }

    /// At the end of the stream: the response if the body ran to the close.
    mutating func finish(peer: String, what: String, machine: String) throws(VouchError) -> HTTPResponse? {
        guard let head, head.headers["content-length"] == nil, head.headers["transfer-encoding"] == nil else { return nil }
        return HTTPResponse(status: head.status, headers: head.headers, body: Array(buffer[head.bodyStart...]))
    }

    private static func parseHead(
        _ bytes: ArraySlice<UInt8>, peer: String, what: String, machine: String
    ) throws(VouchError) -> (status: Int, headers: [String: String], bodyStart: Int) {
        let lines = String(decoding: bytes, as: UTF8.self).components(separatedBy: "\r\n")
        let statusLine = lines.first ?? ""
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]), (100...599).contains(status) else {
            throw notHTTP(peer, what, machine, "the status line \(String(reflecting: String(statusLine.prefix(80))))")
        }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw notHTTP(peer, what, machine, "the header line \(String(reflecting: line))") }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers, 0)
    }

    /// The de-chunked body, or nil while chunks are missing.
    private static func dechunk(_ bytes: [UInt8], peer: String, what: String, machine: String) throws(VouchError) -> [UInt8]? {
        var body: [UInt8] = []
        var i = 0
        while true {
            guard let lineEnd = bytes[i...].firstRange(of: Array("\r\n".utf8)) else { return nil }
            let sizeText = String(decoding: bytes[i..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0 else {
                throw notHTTP(peer, what, machine, "the chunk size \(String(reflecting: String(sizeText)))")
            }
            let start = lineEnd.upperBound
            if size == 0 { return body }
            guard bytes.count >= start + size + 2 else { return nil }
            body += bytes[start..<start + size]
            i = start + size + 2
        }
    }

    private static func notHTTP(_ peer: String, _ what: String, _ machine: String, _ detail: String) -> VouchError {
        VouchError(.apiError, "\(peer) answered \(what) with something that is not HTTP/1.1: \(detail)", machine: machine)
    }

    private func notHTTP(_ peer: String, _ what: String, _ machine: String, _ detail: String) -> VouchError {
        Self.notHTTP(peer, what, machine, detail)
    }
}
