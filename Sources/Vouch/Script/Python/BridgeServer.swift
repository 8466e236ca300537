import Foundation
import Glibc
import Synchronization
import VouchSupport

/// Serves the requests of one Python interpreter running a test script
/// (the protocol is described in `python/vouch_driver/bridge.py`; the calls
/// are those of `BridgeTable`).
///
/// Requests are handled one at a time, in the order the script makes them.
/// Log sections and subtests the script opens become real nested sections
/// (and JUnit cases) by serving the requests inside them one level deeper.
/// An `interrupt` message (Ctrl-C in the interactive session) cancels the
/// call in progress.
final class BridgeServer: Sendable {
    let driver: Driver
    let script: URL?
    private let writer: WriteDescriptor
    private let reader: FDReader
    private let state = Mutex(State())

    struct State {
        var current: Task<Result<JSONValue, VouchError>, Never>?
        var failure: ScriptFailure?
        var standardError: [String] = []
        var interactions: [String: Task<Result<Void, VouchError>, Never>] = [:]
    }

    /// What the script reported when it raised.
    struct ScriptFailure: Sendable {
        var message: String
        var traceback: String
        var location: SourceLocation?
    }

    init(driver: Driver, socket: Int32, script: URL?) {
        self.driver = driver
        self.script = script
        self.writer = WriteDescriptor(dup(socket))
        self.reader = FDReader(fd: socket, name: "python-bridge")
    }

    /// Keeps the interpreter's stderr for the error if it dies, and logs it.
    func noteStandardError(_ line: String) {
        state.withLock {
            $0.standardError.append(line)
            if $0.standardError.count > 60 { $0.standardError.removeFirst() }
        }
        driver.log.warning(line)
    }

    /// Serves until the interpreter closes the bridge.
    /// - Throws: `.protocolError` for malformed requests; `.cancelled`.
    func serve() async throws(VouchError) {
        let requests = Requests()
        let pump = Task {
            var splitter = LineSplitter()
            do throws(VouchError) {
                while let chunk = try await reader.queue.next() {
                    splitter.append(chunk)
                    while let line = splitter.next() {
                        let message = try BridgeRequest.parse(line)
                        if message.isInterrupt {
                            state.withLock { $0.current?.cancel() }
                        } else {
                            requests.push(message)
                        }
                    }
                }
                requests.finish(nil)
            } catch {
                requests.finish(error)
            }
        }
        defer {
            pump.cancel()
            reader.shutdownSocket()
            writer.close()
        }
        _ = try await serve(requests, section: nil)
        for task in state.withLock({ Array($0.interactions.values) }) { task.cancel() }
    }

    /// The run's result once the interpreter has exited with `status`.
    /// - Throws: `.assertionFailed` carrying the script's traceback, or
    ///   `.other` when the interpreter died without reporting.
    func outcome(status: ExitStatus, script name: String) throws(VouchError) {
        let (failure, stderr) = state.withLock { ($0.failure, $0.standardError) }
        if let failure {
            throw VouchError(.assertionFailed, "\(name) failed: \(failure.message)",
                             outputTail: tail(failure.traceback, lines: 40, maxBytes: 8000), location: failure.location)
        }
        guard status == .exited(0) else {
            throw VouchError(.other, "the Python interpreter running \(name) ended with \(status)",
                             outputTail: tail(stderr.joined(separator: "\n"), lines: 30))
        }
    }

    // MARK: - Serving

    /// The requests read so far, in order.
    final class Requests: Sendable {
        private struct State {
            var queue: [BridgeRequest] = []
            var end: VouchError?? = .none
            var waiter: CheckedContinuation<Void, Never>?
        }
        private let state = Mutex(State())

        func push(_ request: BridgeRequest) {
            state.withLock { s -> CheckedContinuation<Void, Never>? in
                s.queue.append(request)
                defer { s.waiter = nil }
                return s.waiter
            }?.resume()
        }

        func finish(_ error: VouchError?) {
            state.withLock { s -> CheckedContinuation<Void, Never>? in
                s.end = .some(error)
                defer { s.waiter = nil }
                return s.waiter
            }?.resume()
        }

        /// The next request; nil when the interpreter closed the bridge.
        /// - Throws: the reader's error; `.cancelled`.
        func next() async throws(VouchError) -> BridgeRequest? {
            while true {
                if Task.isCancelled { throw VouchError.cancelled() }
                enum Step { case request(BridgeRequest), end(VouchError?), wait }
                let step = state.withLock { s -> Step in
                    if !s.queue.isEmpty { return .request(s.queue.removeFirst()) }
                    if case .some(let error) = s.end { return .end(error) }
                    return .wait
                }
                switch step {
                case .request(let r): return r
                case .end(let error?): throw error
                case .end(nil): return nil
                case .wait: break
                }
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                        let now = state.withLock { s -> Bool in
                            if !s.queue.isEmpty || s.end != nil || Task.isCancelled { return true }
                            s.waiter = c
                            return false
                        }
                        if now { c.resume() }
                    }
                } onCancel: {
                    state.withLock { s -> CheckedContinuation<Void, Never>? in defer { s.waiter = nil }; return s.waiter }?.resume()
                }
            }
        }
    }

    /// A section the script closed with an exception: fails the subtest.
    struct SectionFailed: Error, CustomStringConvertible {
        let description: String
    }

    /// Serves requests until the stream ends (top level) or `section` is
    /// closed; returns the failure the script closed it with.
    private func serve(_ requests: Requests, section: String?) async throws(VouchError) -> String? {
        while let request = try await requests.next() {
            let call: BridgeCall
            let args: BridgeArguments
            do {
                call = try BridgeTable.lookup(request)
                args = try call.validate(request.args)
            } catch {
                await respond(request, error: error)
                continue
            }
            switch call.name {
            case "begin_section":
                await respond(request, .null)
                let title = args.string("title")
                let body: () async throws -> Void = {
                    if let failure = try await self.serve(requests, section: title) { throw SectionFailed(description: failure) }
                }
                do {
                    if args.bool("subtest") {
                        try await subtest(title, file: request.location?.file ?? "<script>", line: request.location?.line ?? 0, body)
                    } else {
                        try await driver.log.nested(title, machine: args.optionalString("machine_name"), body)
                    }
                } catch is SectionFailed {
                    // The script closed the section with an exception: it knows, and reports it itself.
                } catch let error as VouchError where error.cause is SectionFailed {
                } catch let error as VouchError {
                    throw error
                } catch {
                    throw VouchError.from(error, "serving the script")
                }
            case "end_section":
                guard section != nil else {
                    await respond(request, error: VouchError(.protocolError, "end_section without an open section"))
                    continue
                }
                await respond(request, .null)
                return args.optionalString("failure")
            case "script_failed":
                let location = args.optionalString("file").map { SourceLocation(file: $0, line: args.optionalInt("line") ?? 0) }
                state.withLock {
                    $0.failure = ScriptFailure(message: args.string("message"), traceback: args.string("traceback"), location: location)
                }
                await respond(request, .null)
            default:
                try await perform(call, args, for: request)
            }
        }
        if let section { throw VouchError(.protocolError, "the script ended inside section '\(section)'") }
        return nil
    }

    /// Runs one call as its own task, so an interrupt can cancel just that call.
    private func perform(_ call: BridgeCall, _ args: BridgeArguments, for request: BridgeRequest) async throws(VouchError) {
        guard let perform = call.perform else { return await respond(request, .null) }
        var machine: Machine?
        if let name = request.machine {
            do { machine = try driver.machine(name) } catch { return await respond(request, error: error) }
        }
        let location = request.location ?? SourceLocation(file: script?.path ?? "<script>", line: 0)
        let context = BridgeContext(server: self, machine: machine, location: location)
        let task = Task { () async -> Result<JSONValue, VouchError> in
            do throws(VouchError) { return .success(try await perform(context, args)) } catch { return .failure(error) }
        }
        state.withLock { $0.current = task }
        let result = await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        state.withLock { $0.current = nil }
        if Task.isCancelled { throw VouchError.cancelled() }
        switch result {
        case .success(let value): await respond(request, value)
        case .failure(let error): await respond(request, error: error)
        }
    }

    private func respond(_ request: BridgeRequest, _ result: JSONValue) async {
        await send(["id": .number(Double(request.id)), "result": result])
    }

    private func respond(_ request: BridgeRequest, error: VouchError) async {
        await send(["id": .number(Double(request.id)),
                    "error": ["kind": .string(error.kind.rawValue), "message": .string(error.description)]])
    }

    private func send(_ message: JSONValue) async {
        // A gone interpreter shows up as the end of the request stream.
        try? await writer.write(Array((message.description + "\n").utf8), what: "write to the Python bridge", until: Deadline(seconds: 30))
    }

    // MARK: - Interactive shells

    /// Listens on a private socket the interpreter connects to, and relays
    /// it to an interactive shell on `machine` until that shell exits.
    func startInteraction(_ machine: Machine) async throws(VouchError) -> String {
        let path = driver.runDirectory + "/interact-\(machine.variableName).sock"
        unlink(path)
        let listener: Int32
        do { listener = try UnixSocket.listen(path: path) } catch {
            throw VouchError(.other, "cannot listen for the interactive shell", machine: machine.name, cause: error)
        }
        driver.log.log("interactive shell starting (Ctrl-D or exit returns)", machine: machine.name)
        let task = Task { () async -> Result<Void, VouchError> in
            defer { close(listener); unlink(path) }
            do throws(VouchError) {
                let fd = try await acceptOne(listener, within: 30)
                let user = FDReader(fd: dup(fd), name: "interact-\(machine.name)")
                let out = WriteDescriptor(fd)
                defer { user.shutdownSocket(); out.close() }
                try await machine.shellInteract(input: user.queue) { bytes in
                    try? await out.write(bytes, what: "write to the interactive shell", until: Deadline(seconds: 10))
                }
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        state.withLock { $0.interactions[machine.name] = task }
        return path
    }

    /// Waits for the interactive shell on `machine` to end.
    func finishInteraction(for machine: String) async throws(VouchError) {
        guard let task = state.withLock({ $0.interactions.removeValue(forKey: machine) }) else { return }
        try await task.value.get()
    }
}

extension BridgeTable {
    /// The table entry for `request`, of the right scope.
    /// - Throws: `.unsupported` for an unknown call, `.protocolError` for a scope mismatch.
    static func lookup(_ request: BridgeRequest) throws(VouchError) -> BridgeCall {
        guard let call = calls[request.call] else {
            throw VouchError(.unsupported, "not supported yet by Vouch: \(request.call)", machine: request.machine)
        }
        guard (call.scope == .machine) == (request.machine != nil) else {
            throw VouchError(.protocolError, "\(request.call) is a \(call.scope.rawValue) call; the request \(request.machine == nil ? "names no machine" : "names a machine")")
        }
        return call
    }
}

/// One request from the script.
struct BridgeRequest: Sendable {
    var id: Int
    var call: String
    var machine: String?
    var args: [String: JSONValue]
    var location: SourceLocation?
    var isInterrupt = false

    /// - Throws: `.protocolError` naming what is malformed.
    static func parse(_ line: some Collection<UInt8>) throws(VouchError) -> BridgeRequest {
        guard let json = try? JSONValue.parse(line), case .object = json else {
            throw VouchError(.protocolError, "the Python side sent a line that is not a JSON object: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        if json["interrupt"]?.boolValue == true {
            return BridgeRequest(id: 0, call: "interrupt", args: [:], isInterrupt: true)
        }
        guard let id = json["id"]?.intValue, let call = json["call"]?.stringValue else {
            throw VouchError(.protocolError, "a request from the Python side lacks id or call: \(json)")
        }
        var location: SourceLocation?
        if let file = json["where"]?["file"]?.stringValue, let line = json["where"]?["line"]?.intValue {
            location = SourceLocation(file: file, line: line)
        }
        var args: [String: JSONValue] = [:]
        if case .object(let given)? = json["args"] { args = given }
        return BridgeRequest(id: id, call: call, machine: json["machine"]?.stringValue, args: args, location: location)
    }
}

/// Accepts one connection on `listener`, waiting at most `seconds`.
/// - Throws: `.timeout` when nobody connects; `.cancelled`.
func acceptOne(_ listener: Int32, within seconds: Double) async throws(VouchError) -> Int32 {
    let deadline = Deadline(seconds: seconds)
    while !deadline.hasPassed {
        var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        if poll(&poller, 1, 0) > 0 {
            let fd = accept(listener, nil, nil)
            if fd >= 0 { return fd }
        }
        try await delay(0.02)
    }
    throw VouchError(.timeout, "nobody connected to the interactive shell within \(formatSeconds(seconds))")
}
