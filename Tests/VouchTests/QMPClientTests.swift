import Foundation
import Glibc
import Synchronization
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// A QMP server on a unix socket, on its own thread with blocking I/O,
/// following PROTOCOLS.md §5: greeting, then `qmp_capabilities` before
/// anything else, replies carrying the request's `id`, events in between.
final class FakeQMPServer: Sendable {
    typealias Send = @Sendable (JSONValue) -> Void
    /// Handles one command (not `qmp_capabilities`); `send` writes a line.
    typealias Handler = @Sendable (_ command: String, _ request: JSONValue, _ send: Send, _ hangUp: @Sendable () -> Void) -> Void

    let path: String
    private let directory: String
    private let listener: Int32
    /// Every command received, in order (including `qmp_capabilities`).
    let received = Locked<[String]>([])
    /// Commands that arrived before `qmp_capabilities` was answered.
    let beforeCapabilities = Locked<[String]>([])
    private let done = Mutex(false)

    init(handler: @escaping Handler) throws {
        directory = makeTempDirectory("vouch-qmp")
        path = directory + "/qmp"
        listener = try UnixSocket.listen(path: path)
        let listener = self.listener
        let received = self.received
        let early = self.beforeCapabilities
        let thread = Thread {
            let fd = Glibc.accept(listener, nil, nil)
            guard fd >= 0 else { return }
            let writeLock = Mutex(())
            let closed = Mutex(false)
            let send: Send = { message in
                let bytes = Array((message.description + "\n").utf8)
                writeLock.withLock { _ in if !closed.withLock({ $0 }) { try? writeAllBlocking(fd: fd, bytes) } }
            }
            let hangUp: @Sendable () -> Void = {
                writeLock.withLock { _ in
                    closed.withLock { $0 = true }
                    Glibc.shutdown(fd, Int32(SHUT_RDWR))
                }
            }
            send(["QMP": ["version": ["qemu": ["major": 9, "minor": 0, "micro": 0]], "capabilities": []]])
            var splitter = LineSplitter()
            var negotiated = false
            var buffer = [UInt8](repeating: 0, count: 4096)
            reading: while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                splitter.append(Array(buffer[0..<n]))
                while let line = splitter.next() {
                    guard let request = try? JSONValue.parse(line), let command = request["execute"]?.stringValue else { continue }
                    received.value.withLock { $0.append(command) }
                    var reply: [String: JSONValue] = [:]
                    if let id = request["id"] { reply["id"] = id }
                    if command == "qmp_capabilities" {
                        negotiated = true
                        reply["return"] = [:]
                        send(.object(reply))
                        continue
                    }
                    if !negotiated {
                        early.value.withLock { $0.append(command) }
                        reply["error"] = ["class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"]
                        send(.object(reply))
                        continue
                    }
                    handler(command, request, send, hangUp)
                    if closed.withLock({ $0 }) { break reading }
                }
            }
            Glibc.close(fd)
        }
        thread.name = "fake-qmp"
        thread.start()
    }

    func stop() {
        if done.withLock({ let was = $0; $0 = true; return was }) { return }
        Glibc.close(listener)
        removeTree(directory)
    }

    /// A reply to `request` carrying its id.
    static func reply(_ request: JSONValue, _ body: [String: JSONValue]) -> JSONValue {
        var message = body
        if let id = request["id"] { message["id"] = id }
        return .object(message)
    }

    static func event(_ name: String, _ data: JSONValue = [:]) -> JSONValue {
        ["event": .string(name), "data": data, "timestamp": ["seconds": 1_700_000_000, "microseconds": 1]]
    }
}

@Suite struct QMPClientTests {
    func withServer<T: Sendable>(
        _ handler: @escaping FakeQMPServer.Handler, _ body: @escaping @Sendable (QMPClient, FakeQMPServer) async throws -> T
    ) async throws -> T {
        let server = try FakeQMPServer(handler: handler)
        defer { server.stop() }
        let client = try await QMPClient.connect(path: server.path, machine: "vm", timeout: 5)
        do {
            let result = try await body(client, server)
            await client.close()
            return result
        } catch {
            await client.close()
            throw error
        }
    }

    @Test func handshakeAndReplies() async throws {
        try await withServer({ command, request, send, _ in
            switch command {
            case "query-status":
                send(FakeQMPServer.reply(request, ["return": ["status": "running", "running": true]]))
            case "echo":
                send(FakeQMPServer.reply(request, ["return": request["arguments"] ?? .null]))
            default:
                send(FakeQMPServer.reply(request, ["error": ["class": "CommandNotFound", "desc": .string("The command \(command) has not been found")]]))
            }
        }) { client, server in
            let status = try await client.execute("query-status")
            #expect(status["status"]?.stringValue == "running")
            #expect(status["running"]?.boolValue == true)
            let args: JSONValue = ["text": "a \"quoted\" line\nwith newline", "n": 3]
            #expect(try await client.execute("echo", args) == args)
            #expect(server.received.value.withLock { $0 } == ["qmp_capabilities", "query-status", "echo"])
            #expect(server.beforeCapabilities.value.withLock { $0 }.isEmpty)
        }
    }

    @Test func errorReplyBecomesQMPError() async throws {
        try await withServer({ command, request, send, _ in
            send(FakeQMPServer.reply(request, ["error": ["class": "GenericError", "desc": "Could not open 'x.png'"]]))
        }) { client, _ in
            let error = await expectVouchError(.qmpError) { try await client.execute("screendump", ["filename": "x.png"]) }
            #expect(error?.machine == "vm")
            #expect(error?.message == "QMP screendump failed: GenericError: Could not open 'x.png'")
        }
    }

    /// Replies are matched by id, not by order.
    @Test func repliesOutOfOrder() async throws {
        let held = Mutex<JSONValue?>(nil)
        try await withServer({ command, request, send, _ in
            if command == "slow" {
                held.withLock { $0 = request }
            } else {
                send(FakeQMPServer.reply(request, ["return": "fast-result"]))
                if let slow = held.withLock({ $0 }) { send(FakeQMPServer.reply(slow, ["return": "slow-result"])) }
            }
        }) { client, _ in
            async let slow = client.execute("slow")
            try await Task.sleep(for: .milliseconds(200))
            async let fast = client.execute("fast")
            let (s, f) = try await (slow, fast)
            #expect(s == "slow-result")
            #expect(f == "fast-result")
        }
    }

    @Test func eventBetweenCommandAndReply() async throws {
        try await withServer({ command, request, send, _ in
            send(FakeQMPServer.event("STOP"))
            send(FakeQMPServer.reply(request, ["return": [:]]))
        }) { client, _ in
            #expect(try await client.execute("stop") == [:])
            // The event came before the reply, so before waitForEvent was called: it is kept.
            let event = try await client.waitForEvent("STOP", timeout: 5)
            #expect(event["event"]?.stringValue == "STOP")
            #expect(event["timestamp"] != nil)
        }
    }

    @Test func waitingForAnEventThatComesLater() async throws {
        try await withServer({ command, request, send, _ in
            send(FakeQMPServer.reply(request, ["return": [:]]))
            Thread.sleep(forTimeInterval: 0.2)
            send(FakeQMPServer.event("RESET", ["guest": true, "reason": "guest-reset"]))
            send(FakeQMPServer.event("SHUTDOWN", ["guest": true, "reason": "guest-shutdown"]))
        }) { client, _ in
            async let shutdown = client.waitForEvent("SHUTDOWN", timeout: 5)
            try await client.execute("system_reset")
            let event = try await shutdown
            #expect(event["data"]?["reason"]?.stringValue == "guest-shutdown")
            // RESET arrived while nobody waited for it: still there, once.
            #expect(try await client.waitForEvent("RESET", timeout: 5)["data"]?["reason"]?.stringValue == "guest-reset")
            await client.clearEvents()
            let gone = await expectVouchError(.timeout) { _ = try await client.waitForEvent("RESET", timeout: 0.3) }
            #expect(gone?.message.contains("no QMP event RESET") == true)
        }
    }

    @Test func serverClosingFailsThePendingCommand() async throws {
        try await withServer({ command, request, send, hangUp in
            if command == "quit" { hangUp() } else { send(FakeQMPServer.reply(request, ["return": [:]])) }
        }) { client, _ in
            try await client.execute("query-status")
            let waiter = Task { try await client.waitForEvent("NEVER", timeout: 30) }
            try await Task.sleep(for: .milliseconds(100))
            let error = await expectVouchError(.qmpError) { try await client.execute("quit") }
            #expect(error?.message.contains("closed") == true, "\(String(describing: error))")
            let waitError = await expectVouchError(.qmpError) { _ = try await waiter.value }
            #expect(waitError?.message.contains("closed") == true)
            let later = await expectVouchError(.qmpError) { try await client.execute("query-status") }
            #expect(later?.message.contains("connection closed") == true)
            // Waiting for an event on a closed connection fails at once instead of hanging.
            let lateWait = await expectVouchError(.qmpError) { _ = try await client.waitForEvent("SHUTDOWN", timeout: 2) }
            #expect(lateWait?.message.contains("closed") == true)
        }
    }

    @Test func connectFailsWithoutAServer() async throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let error = await expectVouchError(.qmpError) {
            _ = try await QMPClient.connect(path: dir + "/absent", machine: "vm", timeout: 0.3)
        }
        #expect(error?.message.contains("cannot connect to QMP") == true)
    }

    @Test func lineSplitter() {
        var s = LineSplitter()
        s.append(Array("{\"a\":1}\r\n{\"b\"".utf8))
        #expect(s.next().map { Array($0) } == Array("{\"a\":1}".utf8))
        #expect(s.next() == nil)
        s.append(Array(":2}\n".utf8))
        #expect(s.next().map { Array($0) } == Array("{\"b\":2}".utf8))
        #expect(s.remainder.isEmpty)
    }
}

/// A mutex-protected value that can be shared by reference.
final class Locked<T: Sendable>: Sendable {
    let value: Mutex<T>
    init(_ initial: T) { value = Mutex(initial) }
}
