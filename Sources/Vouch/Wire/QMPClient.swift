import Foundation
import Glibc

/// A QEMU Machine Protocol client over a unix socket.
///
/// Reads the greeting, negotiates capabilities, then sends commands with an
/// `id` and matches replies by it. Asynchronous events are kept (the last
/// 256) so that callers can wait for one that may already have arrived.
actor QMPClient {
    let machine: String
    private let fd: Int32
    private let reader: FDReader
    private var pending: [Int: CheckedContinuation<JSONValue, any Error>] = [:]
    private var nextID = 0
    private var events: [JSONValue] = []
    private var eventWaiters: [(id: Int, name: String, c: CheckedContinuation<JSONValue, any Error>)] = []
    private var closedReason: String?
    private var pump: Task<Void, Never>?

    /// Connects to the QMP socket at `path`, retrying for `timeout` seconds
    /// while QEMU starts (and giving up early if `process` exits).
    /// - Throws: `VouchError.qmpError` if the socket never answers or the
    ///   greeting is not QMP.
    static func connect(path: String, machine: String, timeout: Double = 10, whileRunning process: ChildProcess? = nil) async throws -> QMPClient {
        let fd: Int32
        do {
            fd = try await UnixSocket.connect(path: path, retryingFor: timeout, unless: { process?.exitStatus != nil })
        } catch {
            throw VouchError(.qmpError, "cannot connect to QMP at \(path): \(error)", machine: machine)
        }
        let client = QMPClient(machine: machine, fd: fd)
        try await client.handshake(timeout: timeout)
        return client
    }

    private init(machine: String, fd: Int32) {
        self.machine = machine
        self.fd = fd
        self.reader = FDReader(fd: fd, name: "qmp-\(machine)")
    }

    private func handshake(timeout: Double) async throws {
        let greeting = try await withDeadline(seconds: timeout) { [reader] () async throws -> JSONValue in
            var splitter = LineSplitter()
            while true {
                if let line = splitter.next() { return try JSONValue.parse(line) }
                guard let chunk = try await reader.queue.next() else {
                    throw VouchError(.qmpError, "QMP socket closed before the greeting")
                }
                splitter.append(chunk)
            }
        }
        guard greeting["QMP"] != nil else {
            throw VouchError(.qmpError, "expected a QMP greeting, got \(greeting)", machine: machine)
        }
        pump = Task { await self.readLoop() }
        _ = try await execute("qmp_capabilities")
    }

    /// Runs a QMP command and returns its `return` value.
    /// - Throws: `VouchError.qmpError` with QEMU's error class and text, or
    ///   when the connection is closed.
    @discardableResult
    func execute(_ command: String, _ arguments: JSONValue? = nil) async throws -> JSONValue {
        if let closedReason {
            throw VouchError(.qmpError, "QMP \(command): connection closed (\(closedReason))", machine: machine)
        }
        nextID += 1
        let id = nextID
        var message: [String: JSONValue] = ["execute": .string(command), "id": .number(Double(id))]
        if let arguments { message["arguments"] = arguments }
        let bytes = Array((JSONValue.object(message).description + "\n").utf8)
        return try await withCheckedThrowingContinuation { c in
            pending[id] = c
            do {
                try writeAll(fd: fd, bytes)
            } catch {
                pending[id] = nil
                c.resume(throwing: VouchError(.qmpError, "QMP \(command): \(error)", machine: machine))
            }
        }.checkedReply(command: command, machine: machine)
    }

    /// Waits for an event named `name` received after the last call to
    /// `clearEvents` (an earlier one counts), or throws on cancellation.
    func waitForEvent(_ name: String) async throws -> JSONValue {
        if let index = events.firstIndex(where: { $0["event"]?.stringValue == name }) {
            return events.remove(at: index)
        }
        if let closedReason {
            throw VouchError(.qmpError, "QMP connection closed (\(closedReason)) while waiting for event \(name)", machine: machine)
        }
        nextID += 1
        let id = nextID
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { c in
                if Task.isCancelled { c.resume(throwing: CancellationError()); return }
                eventWaiters.append((id, name, c))
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    /// Forgets events received so far.
    func clearEvents() { events.removeAll() }

    /// Closes the connection.
    func close() {
        reader.shutdownSocket()
    }

    private func cancelWaiter(_ id: Int) {
        if let i = eventWaiters.firstIndex(where: { $0.id == id }) {
            eventWaiters.remove(at: i).c.resume(throwing: CancellationError())
        }
    }

    private func readLoop() async {
        var splitter = LineSplitter()
        do {
            while let chunk = try await reader.queue.next() {
                splitter.append(chunk)
                while let line = splitter.next() {
                    guard let message = try? JSONValue.parse(line) else { continue }
                    dispatch(message)
                }
            }
            closeAll("QEMU closed the QMP socket")
        } catch {
            closeAll("\(error)")
        }
    }

    private func dispatch(_ message: JSONValue) {
        if let name = message["event"]?.stringValue {
            if let i = eventWaiters.firstIndex(where: { $0.name == name }) {
                eventWaiters.remove(at: i).c.resume(returning: message)
            } else {
                events.append(message)
                if events.count > 256 { events.removeFirst() }
            }
        } else if let id = message["id"]?.intValue, let c = pending.removeValue(forKey: id) {
            c.resume(returning: message)
        }
    }

    private func closeAll(_ reason: String) {
        closedReason = reason
        let error = VouchError(.qmpError, "QMP connection closed: \(reason)", machine: machine)
        pending.values.forEach { $0.resume(throwing: error) }
        pending.removeAll()
        eventWaiters.forEach { $0.c.resume(throwing: error) }
        eventWaiters.removeAll()
    }
}

extension JSONValue {
    fileprivate func checkedReply(command: String, machine: String) throws -> JSONValue {
        if let error = self["error"] {
            let cls = error["class"]?.stringValue ?? "Error"
            let desc = error["desc"]?.stringValue ?? "\(error)"
            throw VouchError(.qmpError, "QMP \(command) failed: \(cls): \(desc)", machine: machine)
        }
        return self["return"] ?? .null
    }
}

/// Splits a byte stream into lines (without the newline).
struct LineSplitter {
    private var buffer: [UInt8] = []
    private var start = 0

    mutating func append(_ bytes: [UInt8]) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete line, or nil.
    mutating func next() -> ArraySlice<UInt8>? {
        guard let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) else {
            if start > 65536 {
                buffer.removeFirst(start)
                start = 0
            }
            return nil
        }
        var line = buffer[start..<newline]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        start = newline + 1
        return line
    }

    /// Bytes after the last newline.
    var remainder: ArraySlice<UInt8> { buffer[start...] }
}
