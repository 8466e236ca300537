import Foundation
import Glibc
import VouchSupport

/// What QEMU answered when it refused a QMP command.
public struct QMPErrorReply: Error, Sendable, CustomStringConvertible, Equatable {
    /// QEMU's error class, e.g. `GenericError`, `DeviceNotFound`.
    public let errorClass: String
    /// QEMU's explanation.
    public let explanation: String

    /// `Class: explanation`.
    public var description: String { "\(errorClass): \(explanation)" }

    package init(errorClass: String, explanation: String) {
        self.errorClass = errorClass
        self.explanation = explanation
    }
}

/// A QEMU Machine Protocol client over a unix socket.
///
/// Reads the greeting, negotiates capabilities, then sends commands with an
/// `id` and matches replies by it. Every request has a deadline and can be
/// cancelled: a QEMU that stops answering (frozen, or stopped with SIGSTOP)
/// makes a request fail, never hang. Asynchronous events go to the
/// `onEvent` handler as they arrive and are also kept (the last 256) for
/// callers that wait for one.
package actor QMPClient {
    package let machine: String
    private let fd: Int32
    private let reader: FDReader
    private var pending: [Int: CheckedContinuation<JSONValue, any Error>] = [:]
    private var nextID = 0
    private var events: [JSONValue] = []
    private var eventWaiters: [(id: Int, name: String, c: CheckedContinuation<JSONValue, any Error>)] = []
    /// Every event, in order, for a test script reading QMP events itself:
    /// Vouch's own waits above do not take from it (the last 256).
    private var scriptEvents: [JSONValue] = []
    private var scriptWaiters: [(id: Int, c: CheckedContinuation<JSONValue?, Never>)] = []
    private var closedReason: String?
    private var pump: Task<Void, Never>?
    private var onEvent: (@Sendable (JSONValue) -> Void)?

    /// How long a command may take by default before it fails.
    package static let defaultTimeout: Double = 30

    /// Connects to the QMP socket at `path`, retrying for `timeout` seconds
    /// while QEMU starts (and giving up early if `stillStarting` says so).
    /// - Throws: `.qmpError` if the socket never answers or the greeting is
    ///   not QMP; `.cancelled`.
    package static func connect(
        path: String, machine: String, timeout: Double = 10, stillStarting: @escaping @Sendable () -> Bool = { true }
    ) async throws(VouchError) -> QMPClient {
        let fd: Int32
        do {
            fd = try await UnixSocket.connect(path: path, retryingFor: timeout, unless: { !stillStarting() })
        } catch where error.kind != .cancelled {
            throw VouchError(.qmpError, "cannot connect to QMP at \(path)", machine: machine, cause: error.cause)
        }
        let client = QMPClient(machine: machine, fd: fd)
        do {
            try await client.handshake(timeout: timeout)
        } catch {
            await client.close()
            throw error
        }
        return client
    }

    private init(machine: String, fd: Int32) {
        self.machine = machine
        self.fd = fd
        self.reader = FDReader(fd: fd, name: "qmp-\(machine)")
    }

    private func handshake(timeout: Double) async throws(VouchError) {
        let deadline = Deadline(seconds: timeout)
        var splitter = LineSplitter()
        var greeting: JSONValue?
        while greeting == nil {
            if let line = splitter.next() {
                greeting = try JSONValue.parse(line)
                break
            }
            switch try await reader.queue.next(until: deadline) {
            case .bytes(let chunk): splitter.append(chunk)
            case .end: throw VouchError(.qmpError, "QEMU closed the QMP socket before its greeting", machine: machine)
            case .timedOut: throw VouchError(.qmpError, "QEMU sent no QMP greeting within \(formatSeconds(timeout))", machine: machine)
            }
        }
        guard let greeting, greeting["QMP"] != nil else {
            throw VouchError(.qmpError, "expected a QMP greeting, got \(greeting.map { "\($0)" } ?? "nothing")", machine: machine)
        }
        let leftover = Array(splitter.remainder)
        pump = Task { await self.readLoop(leftover) }
        _ = try await execute("qmp_capabilities", timeout: deadline.remaining)
    }

    /// Calls `handler` for every event from now on (on the client's reader task).
    package func setEventHandler(_ handler: @escaping @Sendable (JSONValue) -> Void) {
        onEvent = handler
    }

    /// Runs a QMP command and returns its `return` value.
    /// - Throws: `.qmpError` with QEMU's error class and text as a
    ///   `QMPErrorReply` cause, when the connection is closed, or when QEMU
    ///   does not answer within `timeout` seconds; `.cancelled`.
    @discardableResult
    package func execute(_ command: String, _ arguments: JSONValue? = nil, timeout: Double = QMPClient.defaultTimeout) async throws(VouchError) -> JSONValue {
        let reply = try await reply(command, arguments, timeout: timeout)
        if let error = reply["error"] {
            let refusal = QMPErrorReply(errorClass: error["class"]?.stringValue ?? "Error",
                                        explanation: error["desc"]?.stringValue ?? "\(error)")
            throw VouchError(.qmpError, "QMP \(command) failed: \(refusal)", machine: machine, cause: refusal)
        }
        return reply["return"] ?? .null
    }

    /// Runs a QMP command and returns QEMU's whole reply, `{"return": …}` or
    /// `{"error": {"class": …, "desc": …}}`, without its `id`: a refusal is
    /// an answer here, not an error (for scripts that talk QMP themselves).
    /// - Throws: `.qmpError` when the connection is closed or QEMU does not
    ///   answer within `timeout` seconds; `.cancelled`.
    package func reply(_ command: String, _ arguments: JSONValue? = nil, timeout: Double = QMPClient.defaultTimeout) async throws(VouchError) -> JSONValue {
        if let closedReason {
            throw VouchError(.qmpError, "QMP \(command): connection closed (\(closedReason))", machine: machine)
        }
        nextID += 1
        let id = nextID
        var message: [String: JSONValue] = ["execute": .string(command), "id": .number(Double(id))]
        if let arguments { message["arguments"] = arguments }
        let bytes = Array((JSONValue.object(message).description + "\n").utf8)
        let deadline = Deadline(seconds: timeout)
        let alarm = Alarm.schedule(at: deadline) { [weak self] in
            Task { await self?.expire(id, command: command, after: timeout) }
        }
        defer { alarm.cancel() }
        let reply: JSONValue
        do {
            reply = try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { c in
                    if Task.isCancelled {
                        c.resume(throwing: VouchError.cancelled("QMP \(command) cancelled", machine: machine))
                        return
                    }
                    pending[id] = c
                    // Requests are a few hundred bytes: the socket buffer takes them at once.
                    let written = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) }
                    if written != bytes.count {
                        pending[id] = nil
                        c.resume(throwing: VouchError(.qmpError, "QMP \(command): cannot send the request", machine: machine,
                                                      cause: SystemCallError("send to QMP", errno: written < 0 ? errno : EAGAIN)))
                    }
                }
            } onCancel: {
                Task { await self.cancelRequest(id, command: command) }
            }
        } catch let error as VouchError {
            throw error
        } catch {
            throw VouchError.from(error, "QMP \(command)", machine: machine)
        }
        guard case .object(var fields) = reply else { return reply }
        fields["id"] = nil
        return .object(fields)
    }

    /// Waits for an event named `name` received since the last `clearEvents`
    /// (one that already arrived counts), for at most `timeout` seconds.
    /// - Throws: `.timeout`, `.qmpError` when the connection closes, `.cancelled`.
    package func waitForEvent(_ name: String, timeout: Double) async throws(VouchError) -> JSONValue {
        if let index = events.firstIndex(where: { $0["event"]?.stringValue == name }) {
            return events.remove(at: index)
        }
        if let closedReason {
            throw VouchError(.qmpError, "QMP connection closed (\(closedReason)) while waiting for event \(name)", machine: machine)
        }
        nextID += 1
        let id = nextID
        let alarm = Alarm.schedule(at: Deadline(seconds: timeout)) { [weak self] in
            Task { await self?.resumeWaiter(id, throwing: VouchError(.timeout, "no QMP event \(name) within \(formatSeconds(timeout))")) }
        }
        defer { alarm.cancel() }
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { c in
                    if Task.isCancelled { c.resume(throwing: VouchError.cancelled()); return }
                    eventWaiters.append((id, name, c))
                }
            } onCancel: {
                Task { await self.resumeWaiter(id, throwing: VouchError.cancelled()) }
            }
        } catch let error as VouchError {
            throw error.on(machine)
        } catch {
            throw VouchError.from(error, "waiting for QMP event \(name)", machine: machine)
        }
    }

    /// Forgets events received so far.
    package func clearEvents() { events.removeAll() }

    /// The oldest event a script has not read yet (since the connection
    /// opened), waiting up to `timeout` seconds for one; nil if none came.
    /// - Throws: `.qmpError` when the connection is closed and nothing is
    ///   left to read; `.cancelled`.
    package func nextScriptEvent(timeout: Double) async throws(VouchError) -> JSONValue? {
        if !scriptEvents.isEmpty { return scriptEvents.removeFirst() }
        if let closedReason {
            throw VouchError(.qmpError, "QMP connection closed (\(closedReason))", machine: machine)
        }
        nextID += 1
        let id = nextID
        let alarm = Alarm.schedule(at: Deadline(seconds: timeout)) { [weak self] in
            Task { await self?.resumeScriptWaiter(id, with: nil) }
        }
        defer { alarm.cancel() }
        let event = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<JSONValue?, Never>) in
                if Task.isCancelled { c.resume(returning: nil); return }
                scriptWaiters.append((id, c))
            }
        } onCancel: {
            Task { await self.resumeScriptWaiter(id, with: nil) }
        }
        if Task.isCancelled { throw VouchError.cancelled("waiting for a QMP event", machine: machine) }
        return event
    }

    private func resumeScriptWaiter(_ id: Int, with event: JSONValue?) {
        if let i = scriptWaiters.firstIndex(where: { $0.id == id }) {
            scriptWaiters.remove(at: i).c.resume(returning: event)
        }
    }

    /// Closes the connection; pending requests fail at once.
    package func close() {
        reader.shutdownSocket()
        closeAll("the QMP connection was closed by Vouch")
    }

    // MARK: - Internals

    private func expire(_ id: Int, command: String, after timeout: Double) {
        pending.removeValue(forKey: id)?.resume(throwing: VouchError(
            .qmpError, "QEMU did not answer QMP \(command) within \(formatSeconds(timeout))", machine: machine))
    }

    private func cancelRequest(_ id: Int, command: String) {
        pending.removeValue(forKey: id)?.resume(throwing: VouchError.cancelled("QMP \(command) cancelled", machine: machine))
    }

    private func resumeWaiter(_ id: Int, throwing error: VouchError) {
        if let i = eventWaiters.firstIndex(where: { $0.id == id }) {
            eventWaiters.remove(at: i).c.resume(throwing: error)
        }
    }

    private func readLoop(_ leftover: [UInt8]) async {
        var splitter = LineSplitter()
        splitter.append(leftover)
        do {
            while true {
                while let line = splitter.next() {
                    // QEMU only sends JSON; a line that is not is skipped rather than fatal.
                    guard let message = try? JSONValue.parse(line) else { continue }
                    dispatch(message)
                }
                guard let chunk = try await reader.queue.next() else { break }
                splitter.append(chunk)
            }
            closeAll("QEMU closed the QMP socket")
        } catch {
            closeAll("\(error)")
        }
    }

    private func dispatch(_ message: JSONValue) {
        if let name = message["event"]?.stringValue {
            onEvent?(message)
            if scriptWaiters.isEmpty {
                scriptEvents.append(message)
                if scriptEvents.count > 256 { scriptEvents.removeFirst() }
            } else {
                scriptWaiters.removeFirst().c.resume(returning: message)
            }
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
        if closedReason == nil { closedReason = reason }
        let error = VouchError(.qmpError, "QMP connection closed: \(reason)", machine: machine)
        pending.values.forEach { $0.resume(throwing: error) }
        pending.removeAll()
        eventWaiters.forEach { $0.c.resume(throwing: error) }
        eventWaiters.removeAll()
        scriptWaiters.forEach { $0.c.resume(returning: nil) }
        scriptWaiters.removeAll()
    }
}
