import Foundation
import Glibc
import Synchronization

/// Serves the requests of one Python interpreter running a test script
/// (the protocol is described in `python/vouch_driver/bridge.py`).
///
/// Requests are handled one at a time, in the order the script makes them.
/// Log sections and subtests the script opens become real nested sections
/// (and JUnit cases) by serving the requests inside them one level deeper.
/// An `interrupt` message (Ctrl-C in the interactive session) cancels the
/// call in progress.
final class BridgeServer: Sendable {
    let driver: Driver
    let script: URL?
    private let writeFD: Int32
    private let reader: FDReader
    private let state = Mutex(State())

    struct State {
        var current: Task<JSONValue, any Error>?
        var failure: ScriptFailure?
        var standardError: [String] = []
        var interactions: [String: Task<Void, any Error>] = [:]
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
        self.writeFD = dup(socket)
        self.reader = FDReader(fd: socket, name: "python-bridge")
    }

    deinit { close(writeFD) }

    /// Keeps the interpreter's stderr for the error if it dies, and logs it.
    func noteStandardError(_ line: String) {
        state.withLock {
            $0.standardError.append(line)
            if $0.standardError.count > 60 { $0.standardError.removeFirst() }
        }
        driver.log.warning(line)
    }

    /// Serves until the interpreter closes the bridge.
    /// - Throws: `VouchError.protocolError` for malformed requests;
    ///   `CancellationError`.
    func serve() async throws {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: BridgeRequest.self)
        let pump = Task {
            var splitter = LineSplitter()
            do {
                while let chunk = try await reader.queue.next() {
                    splitter.append(chunk)
                    while let line = splitter.next() {
                        let message = try BridgeRequest.parse(line)
                        if message.isInterrupt {
                            state.withLock { $0.current?.cancel() }
                        } else {
                            continuation.yield(message)
                        }
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        defer {
            pump.cancel()
            reader.shutdownSocket()
        }
        let requests = Requests(stream.makeAsyncIterator())
        _ = try await serve(requests, section: nil)
        for task in state.withLock({ Array($0.interactions.values) }) { task.cancel() }
    }

    /// The run's result once the interpreter has exited with `status`.
    /// - Throws: `VouchError.assertionFailed` carrying the script's traceback,
    ///   or `.other` when the interpreter died without reporting.
    func outcome(status: ExitStatus, script name: String) throws {
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

    final class Requests {
        var iterator: AsyncThrowingStream<BridgeRequest, any Error>.AsyncIterator
        init(_ iterator: AsyncThrowingStream<BridgeRequest, any Error>.AsyncIterator) { self.iterator = iterator }
        func next() async throws -> BridgeRequest? { try await iterator.next() }
    }

    /// A section the script closed with an exception: fails the subtest.
    struct SectionFailed: Error, CustomStringConvertible {
        let description: String
    }

    /// Serves requests until the stream ends (top level) or `section` is
    /// closed; returns the failure the script closed it with.
    private func serve(_ requests: Requests, section: String?) async throws -> String? {
        while let request = try await requests.next() {
            switch request.call {
            case "begin_section":
                respond(request, .null)
                let title = request.args.string("title") ?? "section"
                let machine = request.args.string("machine_name")
                let body: () async throws -> Void = {
                    if let failure = try await self.serve(requests, section: title) { throw SectionFailed(description: failure) }
                }
                do {
                    if request.args.bool("subtest") == true {
                        try await subtest(title, file: request.location?.file ?? "<script>", line: request.location?.line ?? 0, body)
                    } else {
                        try await driver.log.nested(title, machine: machine, body)
                    }
                } catch is SectionFailed {}
            case "end_section":
                guard section != nil else {
                    respond(request, error: VouchError(.protocolError, "end_section without an open section"))
                    continue
                }
                respond(request, .null)
                return request.args.string("failure")
            case "script_failed":
                let location = request.args.string("file").map {
                    SourceLocation(file: $0, line: request.args.int("line") ?? 0)
                }
                state.withLock {
                    $0.failure = ScriptFailure(message: request.args.string("message") ?? "exception",
                                               traceback: request.args.string("traceback") ?? "", location: location)
                }
                respond(request, .null)
            default:
                try await perform(request)
            }
        }
        if let section { throw VouchError(.protocolError, "the script ended inside section '\(section)'") }
        return nil
    }

    /// Runs one call as its own task, so an interrupt can cancel just that call.
    private func perform(_ request: BridgeRequest) async throws {
        let call = Task { try await self.dispatch(request) }
        state.withLock { $0.current = call }
        let result = await withTaskCancellationHandler { await call.result } onCancel: { call.cancel() }
        state.withLock { $0.current = nil }
        try Task.checkCancellation()
        switch result {
        case .success(let value): respond(request, value)
        case .failure(let error as VouchError): respond(request, error: error)
        case .failure(is CancellationError): respond(request, error: VouchError(.other, "interrupted"), kind: "interrupted")
        case .failure(let error): respond(request, error: VouchError(.other, "\(error)"))
        }
    }

    private func respond(_ request: BridgeRequest, _ result: JSONValue) {
        send(["id": .number(Double(request.id)), "result": result])
    }

    private func respond(_ request: BridgeRequest, error: VouchError, kind: String? = nil) {
        send(["id": .number(Double(request.id)),
              "error": ["kind": .string(kind ?? error.kind.rawValue), "message": .string(error.description)]])
    }

    private func send(_ message: JSONValue) {
        // A gone interpreter shows up as the end of the request stream.
        try? writeAll(fd: writeFD, Array((message.description + "\n").utf8))
    }

    func record(interaction: Task<Void, any Error>, for machine: String) {
        state.withLock { $0.interactions[machine] = interaction }
    }

    func takeInteraction(for machine: String) -> Task<Void, any Error>? {
        state.withLock { $0.interactions.removeValue(forKey: machine) }
    }
}

/// One request from the script.
struct BridgeRequest: Sendable {
    var id: Int
    var call: String
    var machine: String?
    var args: BridgeArguments
    var location: SourceLocation?
    var isInterrupt = false

    /// - Throws: `VouchError.protocolError` naming what is malformed.
    static func parse(_ line: some Collection<UInt8>) throws -> BridgeRequest {
        guard let json = try? JSONValue.parse(line), case .object = json else {
            throw VouchError(.protocolError, "the Python side sent a line that is not a JSON object: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        if json["interrupt"]?.boolValue == true {
            return BridgeRequest(id: 0, call: "interrupt", args: BridgeArguments([:]), isInterrupt: true)
        }
        guard let id = json["id"]?.intValue, let call = json["call"]?.stringValue else {
            throw VouchError(.protocolError, "a request from the Python side lacks id or call: \(json)")
        }
        var location: SourceLocation?
        if let file = json["where"]?["file"]?.stringValue, let line = json["where"]?["line"]?.intValue {
            location = SourceLocation(file: file, line: line)
        }
        if case .object(let args)? = json["args"] {
            return BridgeRequest(id: id, call: call, machine: json["machine"]?.stringValue, args: BridgeArguments(args), location: location)
        }
        return BridgeRequest(id: id, call: call, machine: json["machine"]?.stringValue, args: BridgeArguments([:]), location: location)
    }
}

/// A request's keyword arguments, with JSON null meaning "not given".
struct BridgeArguments: Sendable {
    let values: [String: JSONValue]
    init(_ values: [String: JSONValue]) { self.values = values }

    private func value(_ key: String) -> JSONValue? {
        guard let v = values[key], v != .null else { return nil }
        return v
    }

    func string(_ key: String) -> String? { value(key)?.stringValue }
    func bool(_ key: String) -> Bool? { value(key)?.boolValue }
    func number(_ key: String) -> Double? {
        if case .number(let n)? = value(key) { return n }
        return nil
    }
    func int(_ key: String) -> Int? { number(key).map { Int($0) } }
    func strings(_ key: String) -> [String] { value(key)?.arrayValue?.compactMap(\.stringValue) ?? [] }

    /// - Throws: `VouchError.invalidSpec` naming the missing argument.
    func required(_ key: String, for call: String) throws -> String {
        guard let s = string(key) else { throw VouchError(.invalidSpec, "\(call): missing argument '\(key)'") }
        return s
    }
}
